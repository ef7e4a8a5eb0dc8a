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
- onnxruntime-genai and mlx-lm: configs gain fields release by release and older runtimes reject or misread
  them, so the device's runtime must be at least the minor release that built the artifact.
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


@dataclass(frozen=True)
class Rule:
    runtimes: tuple[str, ...]
    fact: str  # key in BuiltArtifact.compat
    what: str  # how to name the fact in a message
    min_version: Callable[[str, dict[str, str]], str | None]  # fact value, all facts -> minimum runtime version
    package: str  # the PyPI distribution to upgrade on the device


def _gguf_version(v: str, _facts: dict[str, str]) -> str | None:
    return GGUF_FIRST if int(v) <= 3 else "999"  # v1 (dropped everywhere) is refused before the rules run


RULES: tuple[Rule, ...] = (
    Rule(("onnxruntime", "onnxruntime-genai"), "onnx.ir_version", "ONNX IR version",
         lambda v, _f: _ort_min_for(ir=int(v)), "onnxruntime"),
    Rule(("onnxruntime", "onnxruntime-genai"), "onnx.opset", "ONNX opset",
         lambda v, _f: _ort_min_for(opset=int(v)), "onnxruntime"),
    Rule(("openvino", "openvino-genai"), "openvino.ir_version", "OpenVINO IR version",
         lambda v, _f: OPENVINO_IR11 if int(v) >= 11 else None, "openvino"),
    Rule(("llamacpp",), "gguf.version", "GGUF version", _gguf_version, "llama-cpp-python"),
    Rule(("onnxruntime-genai",), "genai.builder", "onnxruntime-genai model builder version",
         lambda v, _f: ".".join(map(str, parse_version(v)[:2])), "onnxruntime-genai"),
    Rule(("mlx",), "mlx.builder", "mlx-lm version that converted it",
         lambda v, _f: ".".join(map(str, parse_version(v)[:2])), "mlx-lm"),
)

# The runtime a device reports for a package may be a different distribution than the rule's (e.g. the
# onnxruntime-genai runtime also loads onnxruntime): the agent reports one version per runtime name.


def mismatch(facts: dict[str, str], runtime: str, version: str | None) -> str | None:
    """Why ``runtime`` at ``version`` cannot load an artifact with ``facts``, with the fix; None when it can (or
    when nothing is known)."""
    if not facts or not version:
        return None
    have = parse_version(version)
    for rule in RULES:
        if runtime not in rule.runtimes or rule.fact not in facts:
            continue
        value = facts[rule.fact]
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
