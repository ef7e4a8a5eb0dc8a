"""Golden planner cases: each YAML file in cases/ = manifests + observed facts + agent state + local cache
-> expected choice, status and steps per device. One parametrized test runs them all.

Case file keys:
  description: what it pins down
  manifests:   multi-document YAML text (built-in profiles and catalog are loaded too)
  facts:       {device: {ram_gb, available_gb, cpus, arch, runtimes (list, or {name: version}), disk_free_gb,
                         accelerators: [{kind, name, memory_bytes}], llamacpp_backends: [cpu, cuda],
                         openvino_devices: {CPU: name, NPU: name},
                         benchmark: {memory_bandwidth_bytes_per_s, compute_flops_per_s,
                                     artifacts: [{digest, runtime, threads, prompt_tokens, prefill_tokens_per_s,
                                                  decode_tokens, decode_tokens_per_s}]}}}
               (partial; defaults below)
  observed:    {device: {artifacts: [digest...], deployments: [{name, digest, quant, state, context_length, ...,
                                                                 health_gate_digest}]}}
               (health_gate_digest: the gate the plan wants unless given; null = recorded by an older edgectl)
  built:       [{model, quant, source_precision, digest, size_bytes, format, kind, compat,
                 quality: {top1_agreement, perplexity, source_perplexity}}]  (the local store)
  expect:      {device: {status, profile, choices: {deployment: "gguf Q4_K_M" | null}, steps: ["action deployment"],
                         warnings: [substring...], rejected: {deployment: {"gguf Q8_0": substring}}, unfit: substring,
                         gpu_layers: {deployment: n}, runtime_options: {deployment: {option: value}},
                         reasons: {deployment: substring of why it was chosen},
                         step_details: {deployment: substring of its steps' details}}}
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from edgectl.load import load_paths
from edgectl.plan import plan
from edgectl.spec import BuiltArtifact, Quality
from edgectl_agent.api import AcceleratorFact as Accelerator, AgentState, ArtifactRef, DeploymentState, DesiredDeployment, Facts
from edgectl_agent.api import DeviceBenchmark

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))
GIB = 2**30
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_facts(d: dict) -> Facts:
    return Facts(
        agent_version="0.1.0", hostname="h", arch=d.get("arch", "x86_64"), os="Linux", cpu_model="cpu",
        cpu_count=d.get("cpus", 4), cpu_flags=d.get("flags", []),
        ram_total_bytes=int(d.get("ram_gb", 16) * GIB),
        ram_available_bytes=int(d.get("available_gb", d.get("ram_gb", 16) * 0.8) * GIB),
        disk_free_bytes=int(d.get("disk_free_gb", 100) * GIB),
        runtimes=(dict(d["runtimes"]) if isinstance(d.get("runtimes"), dict)
                  else {r: "1.0" for r in d.get("runtimes", ["llamacpp"])}),
        accelerators=[Accelerator(**a) for a in d.get("accelerators", [])],
        llamacpp_backends=d.get("llamacpp_backends"),
        openvino_devices=d.get("openvino_devices"),
        bitsandbytes_backends=d.get("bitsandbytes_backends"),
        benchmark=make_benchmark(d["benchmark"]) if "benchmark" in d else None,
    )


def make_benchmark(d: dict) -> DeviceBenchmark:
    """The agent's enrolment benchmark (edgectl_agent.benchmark) from a case's figures."""
    return DeviceBenchmark.model_validate({
        "threads": 2, "seconds": 1.0, "measured_at": EPOCH, **d,
        "artifacts": [{"seconds": 1.0, "measured_at": EPOCH, **a} for a in d.get("artifacts", [])]})


def make_state(d: dict, gate_of=lambda name: None) -> AgentState:
    """``gate_of``: deployment name -> the health gate digest the plan wants (what a deployment that does not name
    its ``health_gate_digest`` recorded)."""
    deployments = []
    for dep in d.get("deployments", []):
        ref = ArtifactRef(digest=dep["digest"], format="gguf", quant=dep.get("quant", "Q4_K_M"),
                          size_bytes=dep.get("size_bytes", 1), model=dep.get("model", "m"))
        desired = DesiredDeployment(name=dep["name"], artifact=ref, context_length=dep.get("context_length", 2048),
                                    parallel=dep.get("parallel", 1), threads=dep.get("threads"),
                                    runtime_options=dep.get("runtime_options", {}),
                                    health_gate_digest=dep.get("health_gate_digest", gate_of(dep["name"])))
        state = dep.get("state", "serving")
        deployments.append(DeploymentState(name=dep["name"], desired=desired, state=state, since=EPOCH,
                                           active=ref if state == "serving" else None,
                                           last_error=dep.get("last_error")))
    return AgentState(agent_version="0.1.0", started_at=EPOCH, deployments=deployments,
                      artifacts=d.get("artifacts", []))


def planned_gate_digest(spec, deployment: str) -> str | None:
    """The health gate digest the plan wants for ``deployment`` (None: the manifests do not define it)."""
    from edgectl.spec.deployment import gate_digest, gates_for

    dep = spec.deployments.get(deployment)
    if dep is None:
        return None
    return gate_digest(gates_for(dep.spec.rollout.health_gate, spec.models[dep.spec.model].spec.goldens))


def make_built(entries: list[dict]) -> dict[str, BuiltArtifact]:
    from edgectl.plan import recipe_id
    from edgectl.spec import Recipe

    out = {}
    for e in entries:
        fmt, kind = e.get("format", "gguf"), e.get("kind", "llm")
        recipe = Recipe(model=e["model"], format=fmt, kind=kind, quant=e["quant"],
                        source_precision=e["source_precision"])
        out[recipe_id(recipe)] = BuiltArtifact(
            digest=e["digest"], model=e["model"], format=fmt, quant=e["quant"], size_bytes=e["size_bytes"],
            source_digest="sha256:" + "0" * 64, tool_version="t", cache_key="k",
            compat={k: str(v) for k, v in e.get("compat", {}).items()},
            quality=Quality(**{"text": "edgectl-quality-text-v1", "text_tokens": 256, "tool": "llama-cpp-python 0.3.36",
                               **e["quality"]}) if "quality" in e else None)
    return out


@pytest.mark.parametrize("case_file", CASES, ids=[c.stem for c in CASES])
def test_golden(case_file: Path, tmp_path: Path) -> None:
    case = YAML(typ="safe").load(case_file.read_text())
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(case["manifests"])
    spec = load_paths([manifest])
    facts = {name: make_facts(f) if f is not None else None for name, f in case.get("facts", {}).items()}
    observed = {name: make_state(s, lambda dep: planned_gate_digest(spec, dep)) if s is not None else None
                for name, s in case.get("observed", {}).items()}
    for name in spec.devices:
        facts.setdefault(name, None)
    p = plan(spec, facts, observed, make_built(case.get("built", [])), devices=sorted(spec.devices))
    by_device = {d.device: d for d in p.devices}
    assert set(case["expect"]) <= set(by_device), "the case expects a device the manifests do not define"
    for device, want in case["expect"].items():
        got = by_device[device]
        where = f"{case_file.name}: {device}"
        if "status" in want:
            assert got.status == want["status"], f"{where}: status {got.status}, warnings {got.warnings}"
        if "profile" in want:
            assert got.profile.startswith(want["profile"]), where
        if "hint" in want:
            assert want["hint"] in (got.hint or ""), f"{where}: hint {got.hint!r}"
        deps = {d.deployment: d for d in got.deployments}
        for dep_name, choice in want.get("choices", {}).items():
            dp = deps[dep_name]
            label = f"{dp.chosen.recipe.format} {dp.chosen.recipe.quant}" if dp.chosen else None
            assert label == choice, f"{where}: {dep_name} chose {label}; rejected: " + \
                "; ".join(f"{r.label}: {r.reason}" for r in dp.rejected)
        for dep_name, layers in want.get("gpu_layers", {}).items():
            assert deps[dep_name].chosen.gpu_layers == layers, f"{where}: {dep_name} {deps[dep_name].chosen}"
        for dep_name, text in want.get("reasons", {}).items():
            assert text in deps[dep_name].chosen.reason, f"{where}: {dep_name}: {deps[dep_name].chosen.reason}"
        for dep_name, options in want.get("runtime_options", {}).items():
            assert deps[dep_name].chosen.runtime_options == options, f"{where}: {dep_name} {deps[dep_name].chosen}"
        for dep_name, text in want.get("step_details", {}).items():
            details = [s.detail for s in deps[dep_name].steps]
            assert any(text in d for d in details), f"{where}: {dep_name}: step details {details}"
        if "steps" in want:
            steps = [f"{s.action} {s.deployment}" for s in got.steps]
            assert steps == want["steps"], f"{where}: steps {steps}"
        for text in want.get("warnings", []):
            assert any(text in w for w in got.warnings), f"{where}: no warning with {text!r} in {got.warnings}"
        if "no_warnings" in want:
            assert got.warnings == [], f"{where}: {got.warnings}"
        for dep_name, rejections in want.get("rejected", {}).items():
            reasons = {r.label: r.reason for r in deps[dep_name].rejected}
            for label, text in rejections.items():
                assert label in reasons and text in reasons[label], f"{where}: {dep_name} {label}: {reasons.get(label)}"
        if "unfit" in want:
            texts = [d.unfit or "" for d in got.deployments]
            assert any(want["unfit"] in t for t in texts), f"{where}: unfit texts {texts}"
    assert p.is_empty == case.get("empty", p.is_empty), f"{case_file.name}: is_empty {p.is_empty}"


def test_every_builtin_profile_is_in_a_golden_case() -> None:
    from edgectl.load import builtin_profiles_dir

    builtin = {f.stem for f in builtin_profiles_dir().glob("*.yaml")}
    text = "\n".join(c.read_text() for c in CASES)
    missing = sorted(p for p in builtin if f"profile: {p}" not in text)
    assert builtin and not missing, f"built-in profiles without a golden case: {missing}"
