"""The whole path on this machine: manifest -> plan -> GGUF build -> local agent -> OpenAI API, for real.

A real `edgectl` CLI process, a real detached agent process, real llama.cpp on a tiny generated GGUF, and the real
`openai` client. The slow test runs the embedded default manifest with the real SmolLM2.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

TINY_MODEL = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - name: this-machine
      profile: auto
      transport: {{type: local}}
      agent: {{port: {port}}}
"""

DEPLOYMENT = """\
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: {name}}}
spec:
  model: tiny-llama
  selector: {{devices: [this-machine]}}
  context_length: 256
  quantization: {{allow: [{quant}]}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def edgectl(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=600, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture
def home(tmp_path):
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="200", NO_COLOR="1")
    yield env
    subprocess.run([sys.executable, "-c", "import os, signal, pathlib\n"
                    f"for p in pathlib.Path({str(tmp_path / 'home')!r}).glob('agents/*/agent.pid'):\n"
                    "    try: os.kill(int(p.read_text()), signal.SIGKILL)\n    except Exception: pass"], check=False)


def test_apply_serves_then_noop_then_removes(tmp_path, home):
    from openai import OpenAI

    mdir = tmp_path / "manifests"
    mdir.mkdir()
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    from gguf import GGUFReader

    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    port = free_port()
    (mdir / "fleet.yaml").write_text(TINY_MODEL.format(port=port, params=params))
    (mdir / "deploy.yaml").write_text(DEPLOYMENT.format(name="tiny", quant="Q8_0"))

    r = edgectl("apply", str(mdir), env=home)
    assert f"http://127.0.0.1:{port}/v1" in r.stdout
    assert "curl" in r.stdout

    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=8, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 0

    st = json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)
    (dep,) = st[0]["deployments"]
    assert dep["state"] == "serving" and dep["active"]["quant"] == "Q8_0" and dep["active"]["format"] == "gguf"
    digest = dep["active"]["digest"]
    # The figures come from the agent's /metrics after the two real requests above (plus apply's health gate).
    m = st[0]["metrics"]
    assert st[0]["reachable"] and m["requests"] >= 2 and m["error_rate"] == 0, m
    assert m["tokens_per_s"]["tiny"] > 0 and 0 < m["p50_s"] <= m["p95_s"], m
    assert m["rss_bytes"] > 10 * 2**20 and m["disk_free_bytes"] > 0, m
    assert st[0]["ram_budget_bytes"] > 0 and st[0]["plan_status"] == "ok" and st[0]["drift"] == []
    text_status = edgectl("status", str(mdir), env=home).stdout
    assert "serving" in text_status and digest[7:19] in text_status
    assert all(col in text_status for col in ("tok/s", "p50 / p95", "RAM used / budget", "disk free", "drift"))
    assert "0.0% of" in text_status and "none" in text_status  # error rate, no drift

    # --watch refreshes every interval until interrupted.
    watch = subprocess.Popen([sys.executable, "-m", "edgectl.cli", "status", str(mdir), "--watch", "0.5"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=home, cwd=REPO)
    try:
        time.sleep(5)  # several rounds
    finally:
        watch.send_signal(signal.SIGINT)
        stdout, stderr = watch.communicate(timeout=30)
    assert watch.returncode == 0, stderr
    assert "figures over the last 0.5 s" in stdout and digest[7:19] in stdout

    # Same manifests again: nothing to do, the agent keeps the same process and digest.
    agent_root = Path(home["EDGECTL_HOME"]) / "agents" / "this-machine"
    pid = (agent_root / "agent.pid").read_text()
    r2 = edgectl("apply", str(mdir), env=home)
    assert "no changes" in r2.stdout
    assert (agent_root / "agent.pid").read_text() == pid
    plan = json.loads(edgectl("plan", str(mdir), "--json", env=home).stdout)
    assert all(not dep["steps"] for d in plan["devices"] for dep in d["deployments"])

    # Change the quant: a new artifact is built, pushed, activated blue-green; the previous one is kept.
    (mdir / "deploy.yaml").write_text(DEPLOYMENT.format(name="tiny", quant="Q4_0"))
    edgectl("apply", str(mdir), env=home)
    (dep,) = json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)[0]["deployments"]
    assert dep["active"]["quant"] == "Q4_0" and dep["previous"]["digest"] == digest

    # Remove the deployment from the manifests: apply removes it from the device.
    (mdir / "deploy.yaml").unlink()
    r3 = edgectl("apply", str(mdir), env=home)
    assert "removed tiny" in r3.stdout
    assert json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)[0]["deployments"] == []


def test_bad_manifest_exits_2_and_changes_nothing(tmp_path, home):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "fleet.yaml").write_text((REPO / "manifests" / "fleet.yaml").read_text().replace("context_length", "context_lenght"))
    r = edgectl("apply", str(mdir), env=home, check=False)
    assert r.returncode == 2
    assert "fleet.yaml:" in r.stderr and "context_length" in r.stderr
    assert not (Path(home["EDGECTL_HOME"]) / "agents").exists()


@pytest.mark.slow
def test_embedded_default_serves_smollm2(tmp_path, home):
    """`edgectl apply manifests/fleet.yaml` as the README runs it (on a free port), then a real question."""
    from openai import OpenAI

    port = free_port()
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "fleet.yaml").write_text((REPO / "manifests" / "fleet.yaml").read_text().replace("8088", str(port)))
    r = edgectl("apply", str(mdir), env=home)
    assert f"http://127.0.0.1:{port}/v1" in r.stdout
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    chat = client.chat.completions.create(
        model="smollm2", messages=[{"role": "system", "content": "You are a helpful AI assistant."},
                                   {"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16, temperature=0)
    assert "Paris" in chat.choices[0].message.content
    assert "no changes" in edgectl("apply", str(mdir), env=home).stdout


UNFIT = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - name: this-machine
      profile: x86-cpu-server
      transport: {{type: local}}
      agent: {{port: {port}}}
      overrides: {{memory_gb: 2}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: big}}
spec: {{model: llama-3.1-8b-instruct, selector: {{devices: [this-machine]}}, context_length: 8192}}
"""


def test_unfit_plan_shows_numbers_and_apply_changes_nothing(tmp_path, home):
    mdir = tmp_path / "m"
    mdir.mkdir()
    (mdir / "fleet.yaml").write_text(UNFIT.format(port=free_port()))
    plan = edgectl("plan", str(mdir), env=home).stdout
    assert "does not fit" in plan and "the smallest artifact, gguf Q2_K, needs" in plan and "hint:" in plan
    r = edgectl("apply", str(mdir), env=home, check=False)
    assert r.returncode != 0
    assert "nothing was changed" in r.stderr and "--skip-unfit" in r.stderr
    r = edgectl("apply", str(mdir), "--skip-unfit", env=home)
    assert "no changes" in r.stdout
    assert not (Path(home["EDGECTL_HOME"]) / "agents").exists()  # no agent started, no store written


TENSOR = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: linear}}
spec:
  task: tensor
  parameters: 15
  sources:
    - {{type: onnx, path: linear.onnx, precision: FP32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - {{name: this-machine, profile: auto, transport: {{type: local}}, agent: {{port: {port}}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: linear}}
spec: {{model: linear, selector: {{devices: [this-machine]}}, quantization: {{format: onnx, allow: [FP32]}}}}
"""


def test_apply_refuses_an_artifact_the_device_runtime_cannot_load_before_pushing(tmp_path, home):
    """An ONNX IR 10 graph, built (shipped as is) during apply, for a real agent whose onnxruntime is 1.16.3 (the
    last release before IR 10: "Unsupported model IR version: 10, max supported IR version: 9"). The device's
    onnxruntime is an installed-package record on the agent's path (its facts read package metadata, as on a
    device), so the agent reports a real old release; apply refuses after the build, before any byte is pushed."""
    import onnx

    sys.path.insert(0, str(REPO / "tests" / "unit" / "agent"))
    from tiny_onnx import linear_model_bytes

    mdir = tmp_path / "m"
    mdir.mkdir()
    model = onnx.load_from_string(linear_model_bytes())
    model.ir_version, model.opset_import[0].version = 10, 21
    onnx.save(model, str(mdir / "linear.onnx"))
    port = free_port()
    (mdir / "fleet.yaml").write_text(TENSOR.format(port=port))
    old = tmp_path / "old-onnxruntime"
    (old / "onnxruntime-1.16.3.dist-info").mkdir(parents=True)
    (old / "onnxruntime-1.16.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.16.3\n")
    env = dict(home, PYTHONPATH=os.pathsep.join([str(old), home.get("PYTHONPATH", "")]))

    r = edgectl("apply", str(mdir), env=env, check=False)
    out = " ".join((r.stdout + r.stderr).split())  # the console wraps long lines
    assert r.returncode != 0, out
    assert "build linear onnx FP32" in out and "onnx FP32 cannot be loaded there" in out, out
    assert ("ONNX IR version 10 needs onnxruntime >= 1.18, the device has onnxruntime 1.16.3; upgrade it on the "
            "device (pip install -U 'onnxruntime>=1.18', or reinstall edgectl-agent[onnx])") in out, out
    assert "nothing was pushed" in out
    from edgectl.agent_client import AgentClient, read_token

    root = Path(home["EDGECTL_HOME"]) / "agents" / "this-machine"
    with AgentClient(f"http://127.0.0.1:{port}", read_token(root / "token", device="this-machine"),
                     device="this-machine") as client:
        assert client.facts().runtimes["onnxruntime"] == "1.16.3"
        state = client.state()
    assert state.artifacts == [] and state.deployments == []  # nothing pushed, nothing activated

    # Now the artifact is in the local store: the plan itself rejects it, with the same versions.
    plan = " ".join(edgectl("plan", str(mdir), env=env, check=False).stdout.split())
    assert "ONNX IR version 10 needs onnxruntime >= 1.18, the device has onnxruntime 1.16.3" in plan, plan


def test_plan_shows_the_measured_quality_of_the_built_artifact(tmp_path, home):
    """`edgectl build` measures the built GGUF against its source; `edgectl plan` prints the figure beside the
    chosen artifact (the `measured:` part of its line) and --json carries it."""
    mdir = tmp_path / "m"
    mdir.mkdir()
    write_tiny_llama_gguf(mdir / "tiny.gguf")
    (mdir / "fleet.yaml").write_text(TINY_MODEL.format(port=free_port(), params=1_000_000))
    (mdir / "deploy.yaml").write_text(DEPLOYMENT.format(name="tiny", quant="Q8_0"))
    assert "measured:" not in edgectl("plan", str(mdir), env=home).stdout  # nothing built, nothing measured
    edgectl("build", str(mdir), env=home)
    text = " ".join(edgectl("plan", str(mdir), env=home).stdout.split())
    chosen = json.loads(edgectl("plan", str(mdir), "--json", env=home).stdout)["devices"][0]["deployments"][0]["chosen"]
    q = chosen["quality"]
    assert chosen["recipe"]["quant"] == "Q8_0" and q["text"] == "edgectl-quality-text-v1" and q["top1_agreement"] > 0.9
    assert ("gguf Q8_0 on llamacpp" in text and f"measured: top-1 agreement {q['top1_agreement'] * 100:.1f}% with "
            f"the source, perplexity {q['perplexity']:.2f} vs {q['source_perplexity']:.2f}") in text, text


def foreign_agent(root: Path, port: int) -> subprocess.Popen:
    """An agent edgectl did not start (as another edgectl home's would be), answering on ``port``."""
    proc = subprocess.Popen([sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None:
            raise AssertionError(f"the foreign agent exited ({proc.returncode})")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("the foreign agent did not listen")


def test_apply_fails_where_another_process_answers_on_the_agent_port(tmp_path, home):
    """Not "no changes": the device was never observed, its port is someone else's agent. Named, with the fix."""
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    port = free_port()
    (mdir / "fleet.yaml").write_text((REPO / "manifests" / "fleet.yaml").read_text()
                                     .replace("port: 8088", f"port: {port}"))
    proc = foreign_agent(tmp_path / "other-home-agent", port)
    try:
        r = edgectl("apply", str(mdir), env=home, check=False)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert "no changes" not in out, out
    assert "this-machine: failed" in out and f"port {port} on 127.0.0.1 is answered by a process edgectl did not " \
        "start for this device" in out, out
    assert "hint: stop that process, or give the device another port" in out, out
