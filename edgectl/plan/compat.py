"""Can the device's runtime load this artifact? Checked before any byte is pushed, not found out at load time.

Two halves:
- :func:`artifact_facts` reads, from the built files, the facts that decide it: GGUF version and architecture,
  ONNX IR version and opset, OpenVINO IR version, the onnxruntime-genai config's model type, MLX's quantization
  config. ``edgectl build`` records them on the artifact (BuiltArtifact.compat).
- :func:`mismatch` compares them with the runtime version the device's agent reports (Facts.runtimes), by the
  rules below, and returns a reason naming both versions and the fix, or None.

The rules are data (RULES), each from the runtime's own compatibility statement:
- ONNX Runtime's version matrix (onnxruntime.ai/docs/reference/compatibility.html): the highest ONNX IR version
  and ai.onnx opset each release reads. A model with a newer IR fails with "Unsupported model IR version: 10, max
  supported IR version: 9" (ORT 1.16 on IR 10).
- OpenVINO: IR v11 was introduced in 2022.1; older runtimes refuse it ("Unsupported model IR version: 11, max
  supported IR version: 10").
- llama.cpp: GGUF v1 files were dropped (llama.cpp gguf.c: "GGUFv1 is no longer supported"); v2 and v3 load
  everywhere since GGUF replaced GGML (llama-cpp-python 0.1.79); a version above 3 is unknown to all releases.
- onnxruntime-genai runs the graph on an ONNX Runtime, so the ONNX rules apply to that ONNX Runtime, not to the
  genai version: 0.1-0.3 bundle their own (libonnxruntime.so.1.17.1 in 0.1.0, 1.18.0 in 0.2.0 and 0.3.0); from 0.4
  the wheel loads the installed ``onnxruntime`` package, which its metadata requires at a minimum (GENAI_ORT). The
  agent reports that package's version beside genai's (both are in its runtime facts).
- onnxruntime-genai and mlx-lm: configs gain fields release by release and older runtimes reject or misread
  them, so the device's runtime must be at least the minor release that built the artifact.

Recorded but not compared (no runtime publishes a table to compare them with): the GGUF architecture, the genai
config's model type and MLX's quantization bits and group size. They are shown with the artifact; the
builder-version rules above are what catches a genai or mlx-lm too old for a config.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgectl_agent.facts import RUNTIME_EXTRAS

# ONNX Runtime release -> (max IR version, max ai.onnx opset) it reads.
ORT_MATRIX: list[tuple[str, int, int]] = [
    ("1.10", 8, 15), ("1.11", 8, 16), ("1.12", 8, 17), ("1.13", 8, 17), ("1.14", 8, 18), ("1.15", 9, 19),
    ("1.16", 9, 19), ("1.17", 9, 20), ("1.18", 10, 21), ("1.19", 10, 21), ("1.20", 10, 21), ("1.21", 10, 22),
    ("1.22", 11, 23),
]
# onnxruntime-genai release (major, minor) -> the ONNX Runtime it runs graphs on. Read from the Linux x86_64 wheels:
# 0.1-0.3 ship libonnxruntime.so.<version> inside (exact); from 0.4 the wheel requires `onnxruntime>=<version>`
# (Requires-Dist) and loads that package's library (a floor: the device may have a newer one installed).
GENAI_BUNDLED_ORT: dict[tuple[int, int], str] = {(0, 1): "1.17.1", (0, 2): "1.18.0", (0, 3): "1.18.0"}
GENAI_ORT: dict[tuple[int, int], str] = {
    (0, 4): "1.19.0", (0, 5): "1.20.0", (0, 6): "1.20.1", (0, 7): "1.21.0", (0, 8): "1.22.0", (0, 9): "1.22.0",
    (0, 10): "1.23.0", (0, 11): "1.23.2", (0, 12): "1.24.1", (0, 13): "1.24.4", (0, 14): "1.26.0",
    (0, 15): "1.28.0", (0, 16): "1.30.0", (0, 17): "1.30.0", (0, 18): "1.31.0",
}
OPENVINO_IR11 = "2022.1"
GGUF_FIRST = "0.1.79"  # llama-cpp-python's first GGUF release


def parse_version(v: str) -> tuple[int, ...]:
    """'2024.4.1-16618' -> (2024, 4, 1); '1.22.0rc1' -> (1, 22, 0). Non-numeric tails are ignored."""
    out = []
    for part in re.split(r"[-+]", v.strip())[0].split("."):
        m = re.match(r"\d+", part)
        if m is None:
            break
        out.append(int(m.group()))
    return tuple(out)


def _ort_min_for(ir: int | None = None, opset: int | None = None) -> str | None:
    for release, max_ir, max_opset in ORT_MATRIX:
        if (ir is None or ir <= max_ir) and (opset is None or opset <= max_opset):
            return release if release != ORT_MATRIX[0][0] else None  # everything we support reads it
    major, minor = parse_version(ORT_MATRIX[-1][0])[:2]
    return f"{major}.{minor + 1}"  # newer than any release in the table: at least the one after the newest


def genai_onnxruntime(genai: str, onnxruntime: str | None = None) -> tuple[str, str] | None:
    """``(ONNX Runtime version, how it is known)`` that onnxruntime-genai ``genai`` runs graphs on: its bundled
    one (0.1-0.3), else ``onnxruntime`` (the installed package the agent reports), else the minimum its wheel
    requires. None for a version edgectl cannot place."""
    minor = parse_version(genai)[:2]
    if minor in GENAI_BUNDLED_ORT:
        return GENAI_BUNDLED_ORT[minor], "bundled with it"
    if onnxruntime:
        return onnxruntime, "installed beside it"
    floors = [v for k, v in GENAI_ORT.items() if k <= minor]
    return (floors[-1], "the least its package requires") if floors else None


def genai_for_onnxruntime(need: str) -> str | None:
    """The first onnxruntime-genai minor release whose required ONNX Runtime is at least ``need``."""
    for (major, minor), ort in GENAI_ORT.items():
        if parse_version(ort) >= parse_version(need):
            return f"{major}.{minor}"
    return None


@dataclass(frozen=True)
class Rule:
    runtimes: tuple[str, ...]
    fact: str  # key in BuiltArtifact.compat
    what: str  # how to name the fact in a message
    min_version: Callable[[str, dict[str, str]], str | None]  # fact value, all facts -> minimum runtime version
    package: str  # the PyPI distribution to upgrade on the device
    onnxruntime: bool = False  # the minimum is an ONNX Runtime version (for onnxruntime-genai: the one it runs on)


def _gguf_version(v: str, _facts: dict[str, str]) -> str | None:
    return GGUF_FIRST if int(v) <= 3 else "999"  # v1 (dropped everywhere) is refused before the rules run


RULES: tuple[Rule, ...] = (
    Rule(("onnxruntime", "onnxruntime-genai"), "onnx.ir_version", "ONNX IR version",
         lambda v, _f: _ort_min_for(ir=int(v)), "onnxruntime", onnxruntime=True),
    Rule(("onnxruntime", "onnxruntime-genai"), "onnx.opset", "ONNX opset",
         lambda v, _f: _ort_min_for(opset=int(v)), "onnxruntime", onnxruntime=True),
    Rule(("openvino", "openvino-genai"), "openvino.ir_version", "OpenVINO IR version",
         lambda v, _f: OPENVINO_IR11 if int(v) >= 11 else None, "openvino"),
    Rule(("llamacpp",), "gguf.version", "GGUF version", _gguf_version, "llama-cpp-python"),
    Rule(("onnxruntime-genai",), "genai.builder", "onnxruntime-genai model builder version",
         lambda v, _f: ".".join(map(str, parse_version(v)[:2])), "onnxruntime-genai"),
    Rule(("mlx",), "mlx.builder", "mlx-lm version that converted it",
         lambda v, _f: ".".join(map(str, parse_version(v)[:2])), "mlx-lm"),
)



def mismatch(facts: dict[str, str], runtime: str, version: str | None,
             runtimes: dict[str, str] | None = None) -> str | None:
    """Why ``runtime`` at ``version`` cannot load an artifact with ``facts``, with the fix; None when it can (or
    when nothing is known). ``runtimes``: every runtime version the device's agent reports (for onnxruntime-genai,
    the onnxruntime installed beside it)."""
    if not facts or not version:
        return None
    have = parse_version(version)
    for rule in RULES:
        if runtime not in rule.runtimes or rule.fact not in facts:
            continue
        value = facts[rule.fact]
        if rule.onnxruntime and runtime == "onnxruntime-genai":
            why = _genai_onnx_mismatch(rule, value, version, (runtimes or {}).get("onnxruntime"))
            if why:
                return why
            continue
        if rule.fact == "gguf.version" and value.isdigit() and int(value) <= 1:
            return (f"{rule.what} {value} is no longer loaded by any current llama.cpp (device has {runtime} "
                    f"{version}); rebuild the artifact from its source with edgectl build")
        try:
            need = rule.min_version(value, facts)
        except ValueError:
            continue
        if need is None or have >= parse_version(need):
            continue
        if need == "999":
            return (f"{rule.what} {value} is newer than any {runtime} release edgectl knows (device has {version}); "
                    f"rebuild with a released llama-cpp-python")
        return (f"{rule.what} {value} needs {runtime} >= {need}, the device has {runtime} {version}; upgrade it on "
                f"the device (pip install -U '{rule.package}>={need}', or reinstall edgectl-agent[{RUNTIME_EXTRAS.get(runtime, runtime)}]), "
                f"or pin quantization.format to another format")
    return None


def _genai_onnx_mismatch(rule: Rule, value: str, genai: str, onnxruntime: str | None) -> str | None:
    """An ONNX IR/opset rule for onnxruntime-genai, checked against the ONNX Runtime it runs the graph on."""
    try:
        need = rule.min_version(value, {})
    except ValueError:
        return None
    ort = genai_onnxruntime(genai, onnxruntime)
    if need is None or ort is None or parse_version(ort[0]) >= parse_version(need):
        return None
    version, how = ort
    if how == "the least its package requires":
        return None  # a floor below the need says nothing: the installed one may be newer (and was not reported)
    upgrade = genai_for_onnxruntime(need)
    if how == "bundled with it" or upgrade is None:
        fix = (f"pip install -U 'onnxruntime-genai>={upgrade}'" if upgrade else
               f"pip install -U onnxruntime-genai 'onnxruntime>={need}'")
    else:
        fix = f"pip install -U 'onnxruntime>={need}'"
    return (f"{rule.what} {value} needs onnxruntime >= {need}, the device has onnxruntime-genai {genai}, which runs "
            f"graphs on onnxruntime {version} ({how}); upgrade it on the device ({fix}, or reinstall "
            f"edgectl-agent[{RUNTIME_EXTRAS['onnxruntime-genai']}]), or pin quantization.format to another format")


# --- reading facts from built files ----------------------------------------------------------------------------


def artifact_facts(format: str, path: Path, tool_version: str = "") -> dict[str, str]:
    """The compatibility facts of a built artifact at ``path`` (a file, or a laid-out folder). Best effort: a fact
    that cannot be read is left out (and then not checked)."""
    path = Path(path)
    readers = {"gguf": _gguf_facts, "onnx": _onnx_facts, "openvino": _openvino_facts, "mlx": _mlx_facts}
    try:
        facts = readers[format](path) if format in readers else {}
    except (OSError, ValueError, KeyError):
        facts = {}
    tools = dict(_tool_pairs(tool_version))
    if format == "onnx" and path.is_dir() and "onnxruntime-genai" in tools:
        facts["genai.builder"] = tools["onnxruntime-genai"]
    if format == "mlx" and "mlx-lm" in tools:
        facts["mlx.builder"] = tools["mlx-lm"]
    return facts


def _tool_pairs(tool_version: str):
    """'onnxruntime-genai 0.18.0 + onnxruntime 1.32.0' -> [(name, version), ...]."""
    for part in re.split(r"[,+;]", tool_version):
        bits = part.split()
        if len(bits) == 2:
            yield bits[0], bits[1]


def _gguf_facts(path: Path) -> dict[str, str]:
    import struct

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[:4] != b"GGUF":
            return {}
        facts = {"gguf.version": str(struct.unpack("<I", head[4:8])[0])}
    try:
        from gguf import GGUFReader

        field = GGUFReader(str(path)).get_field("general.architecture")
        if field is not None:
            facts["gguf.architecture"] = bytes(field.parts[field.data[0]]).decode()
    except Exception:  # noqa: BLE001  (gguf missing or an odd file: the version alone still counts)
        pass
    return facts


def _onnx_model_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.glob("*.onnx"))


def _onnx_facts(path: Path) -> dict[str, str]:
    import onnx

    irs, opsets = [], []
    for f in _onnx_model_files(path):
        m = onnx.load(str(f), load_external_data=False)
        irs.append(m.ir_version)
        opsets += [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")]
    facts = {}
    if irs:
        facts["onnx.ir_version"] = str(max(irs))
    if opsets:
        facts["onnx.opset"] = str(max(opsets))
    cfg = path / "genai_config.json" if path.is_dir() else None
    if cfg is not None and cfg.is_file():
        model_type = json.loads(cfg.read_text()).get("model", {}).get("type")
        if model_type:
            facts["genai.model_type"] = str(model_type)
    return facts


def _openvino_facts(path: Path) -> dict[str, str]:
    import xml.etree.ElementTree as ET

    xmls = [path] if path.is_file() else sorted(p for p in path.glob("*.xml") if "tokenizer" not in p.name)
    versions = []
    for x in xmls:
        for _event, elem in ET.iterparse(x, events=("start",)):
            if elem.tag == "net" and elem.get("version"):
                versions.append(int(elem.get("version")))
            break  # the root element carries the IR version
    return {"openvino.ir_version": str(max(versions))} if versions else {}


def _mlx_facts(path: Path) -> dict[str, str]:
    cfg = json.loads((path / "config.json").read_text())
    q = cfg.get("quantization") or {}
    facts = {}
    if q:
        facts["mlx.bits"] = str(q.get("bits", ""))
        facts["mlx.group_size"] = str(q.get("group_size", ""))
        if q.get("mode"):
            facts["mlx.mode"] = str(q["mode"])
    return facts
