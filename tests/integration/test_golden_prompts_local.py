"""Golden prompts and quality floors for real, with a local agent and `edgectl apply`:

* SmolLM2-135M with three golden prompts: the capital of France (answer contains "Paris"), Paris as a JSON object
  (answered in a ```json block, valid against its schema) and three colours as a JSON array (SmolLM2 answers an
  object: it misses the schema). The gate asks all three, fails the device naming the third prompt, its check and its
  answer, and removes the deployment; with the two it passes, the same model is deployed. The pull gate's own
  request (edgectl_agent.pull_gate) asks the same prompts of the real agent and edgectl judges the answers it reports.
* A quality floor the freshly built artifact misses: the tiny F32 model at Q2_K against min_top1_agreement 0.99 is
  built and measured during apply, the plan runs again with that figure, and nothing is pushed; the error names
  the artifact and the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401  (fixture)
from tests.tinymodels import quality_gate_manifests

pytestmark = pytest.mark.integration

CAPITAL = {"prompt": "What is the capital of France? Answer in one word.", "max_tokens": 24,
           "expect_contains": "Paris"}
CITY = {"prompt": 'Give a JSON object with the keys "city" and "country" for Paris. Reply with JSON only.',
        "max_tokens": 48, "expect_json_schema": {"type": "object", "required": ["city", "country"],
                                                 "properties": {"city": {"const": "Paris"}}}}
COLOURS = {"prompt": "List three colors as a JSON array of strings. Reply with JSON only.", "max_tokens": 48,
           "expect_json_schema": {"type": "array", "items": {"type": "string"}, "minItems": 3}}


def agent_client(home: dict, port: int):  # noqa: F811
    from edgectl.agent_client import AgentClient, read_token

    root = Path(home["EDGECTL_HOME"]) / "agents" / "this-machine"
    return AgentClient(f"http://127.0.0.1:{port}", read_token(root / "token", device="this-machine"),
                       device="this-machine")


def test_every_golden_prompt_is_asked_and_a_miss_fails_the_device(tmp_path, home):  # noqa: F811
    port = free_port()
    mdir = quality_gate_manifests(tmp_path / "m", port=port, golden_prompts=[CAPITAL, CITY, COLOURS])
    r = edgectl("apply", str(mdir), env=home, check=False)
    errors = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, errors
    assert f"the answer to {COLOURS['prompt']!r} fails expect_json_schema:" in errors, errors
    assert f"the answer to {CITY['prompt']!r}" not in errors and f"the answer to {CAPITAL['prompt']!r}" not in errors
    assert "answered the gate's prompt wrongly" in errors and "removed again" in r.stdout, r.stdout
    with agent_client(home, port) as client:
        assert client.state().deployments == []

    quality_gate_manifests(mdir, port=port, golden_prompts=[CAPITAL, CITY])
    r = edgectl("apply", str(mdir), env=home)
    assert "answer contains 'Paris'; 1 more golden prompts answered right" in r.stdout, r.stdout
    (st,) = json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)
    assert [d["state"] for d in st["deployments"]] == ["serving"]

    # the pull gate asks the real agent the same prompts; edgectl judges what it reports with the same rule
    from edgectl_agent.pull_gate import smoke_request
    from edgectl_agent.pull_state import GoldenAsk, SmokeRequest

    from edgectl.apply.rollout import smoke_from_timings
    from edgectl.pull.rollout import judge
    from edgectl.pull.status import DeviceReport, GateSeen
    from edgectl.spec.deployment import HealthGate, gates_for
    from edgectl.spec.model import GoldenPrompt

    # the model deployed now, plus the colours prompt it answers wrongly
    asked = gates_for(HealthGate(), [GoldenPrompt(**g) for g in (CAPITAL, CITY, COLOURS)])
    with agent_client(home, port) as client:
        token, digest = client._http.headers["Authorization"].split()[1], client.state().deployments[0].active.digest
    report = smoke_request(f"http://127.0.0.1:{port}", token, "chat",
                           SmokeRequest(prompt=asked[0].prompt, max_tokens=asked[0].max_tokens,
                                        more=[GoldenAsk(prompt=g.prompt, max_tokens=g.max_tokens) for g in asked[1:]]),
                           digest=digest, version=1)
    assert report.error is None and len(report.answers) == 2 and "Paris" in report.answer, report
    seen = DeviceReport(seen=0, version=1, applied_version=1, outcome="applied", error=None, gates={
        "chat": GateSeen(digest=digest, version=1, error=None, answers=tuple(report.answers),
                         result=smoke_from_timings({"ttft_s": report.ttft_s, "tokens": report.tokens,
                                                    "decode_s": report.decode_s}, report.answer))})
    ok, why = judge(seen, "chat", 1, digest, asked)
    assert not ok and f"the answer to {COLOURS['prompt']!r} fails expect_json_schema" in why, why
    two = DeviceReport(seen=0, version=1, applied_version=1, outcome="applied", error=None, gates={
        "chat": GateSeen(digest=digest, version=1, error=None, answers=tuple(report.answers[:1]),
                         result=seen.gates["chat"].result)})
    ok, detail = judge(two, "chat", 1, digest, asked[:2])
    assert ok and detail.endswith("1 more golden prompts answered right"), detail


def test_a_fresh_artifact_below_the_quality_floor_is_not_deployed(tmp_path, home):  # noqa: F811
    port = free_port()
    mdir = quality_gate_manifests(tmp_path / "m", port=port, quant="Q2_K", min_top1_agreement=0.99)
    r = edgectl("apply", str(mdir), env=home, check=False)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert "chat: the freshly built gguf Q2_K (sha256:" in out, out
    assert "top-1 agreement with the source < quality.min_top1_agreement 99.0%" in out, out
    assert "not deployed, planning again with this measurement" in out and "nothing was pushed" in out, out
    assert "not deployed, and nothing else that fits meets the floor (lower quality.min_top1_agreement" in out, out
    with agent_client(home, port) as client:
        state = client.state()
    assert state.artifacts == [] and state.deployments == []
    # the store keeps the artifact with its figure: the next plan rejects it without building
    plan = " ".join(edgectl("plan", str(mdir), env=home, check=False).stdout.split())
    assert "quality.min_top1_agreement 99.0%" in plan, plan


def test_pull_publish_checks_the_fresh_artifact_against_the_floor_too(tmp_path, home):  # noqa: F811
    """The same check before publishing for pull devices: nothing is published (the registry named here does not
    even exist: it is never contacted)."""
    from tests.tinymodels import pull_fleet_manifest, write_tiny_llama_gguf

    mdir = tmp_path / "m"
    mdir.mkdir()
    write_tiny_llama_gguf(mdir / "tiny.gguf", seed=7)
    manifest = pull_fleet_manifest("127.0.0.1:9", ["shop-1"], quant="Q2_K")
    (mdir / "all.yaml").write_text(manifest.replace("  context_length: 256\n", "  context_length: 256\n"
                                                    "  quality: {min_top1_agreement: 0.99}\n", 1))
    edgectl("keygen", str(mdir / "fleet.key"), env=home)
    r = edgectl("apply", str(mdir), env=home, check=False)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert "device 'shop-1': chat: the freshly built gguf Q2_K (sha256:" in out, out
    assert "< quality.min_top1_agreement 99.0%" in out and "nothing was published" in out, out
    assert "publish gguf" not in out, out
