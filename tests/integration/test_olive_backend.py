"""The Olive backend of the onnx LLM builder, for real: a real `edgectl apply` of a deployment with
``quantization: {format: onnx, backend: olive}`` runs Olive 0.13's workflow (from its overlay, scripts/setup.sh olive)
on the tiny Hugging Face llama, pushes the folder to a real local agent, whose onnxruntime-genai runtime serves it to
the real openai client. Olive's recipe is visible in the artifact (int4 token embedding: GatherBlockQuantized, which
the default builder does not write) and in the cache key (a second apply has nothing to do). Without the overlay,
`edgectl apply` names the setup command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port
from tests.tinymodels import olive_manifest

pytestmark = pytest.mark.integration
pytest.importorskip("onnxruntime_genai")
openai = pytest.importorskip("openai")
REPO = Path(__file__).resolve().parents[2]


def edgectl(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=900, cwd=REPO)
    if check:
        assert r.returncode == 0, f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def home(tmp_path):
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="220", NO_COLOR="1")
    yield env
    for pid in (tmp_path / "home").glob("agents/*/agent.pid"):
        try:
            os.kill(int(pid.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    from tests.integration.test_onnx_genai import write_genai_llama

    return write_genai_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


def test_apply_builds_with_olive_and_the_agent_serves_it(tmp_path, home, hf_folder):
    import onnx

    port = free_port()
    manifests = olive_manifest(tmp_path / "m", hf_folder, port=port)
    plan = json.loads(edgectl("plan", str(manifests), "--json", env=home).stdout)
    chosen = plan["devices"][0]["deployments"][0]["chosen"]
    assert chosen["recipe"]["backend"] == "olive" and chosen["id"].endswith("/onnx/INT4@FP32+olive"), chosen

    edgectl("apply", str(manifests), env=home)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=8, temperature=0)
    assert chat.usage.completion_tokens >= 1 and chat.choices[0].finish_reason in ("length", "stop")
    done = client.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
    assert done.usage.completion_tokens >= 1

    # The artifact in the controller's store: Olive's recipe (embedding quantized too), no Olive bookkeeping.
    folder = sorted((tmp_path / "home").glob("**/genai_config.json"))[0].parent
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert {"MatMulNBits", "GatherBlockQuantized"} <= ops, ops
    assert not {"footprint.json", "run_history.txt", "model_config.json"} & {p.name for p in folder.iterdir()}
    index = "\n".join(p.read_text(errors="replace") for p in (tmp_path / "home").glob("**/*.json")
                      if "olive workflow" in p.read_text(errors="replace"))
    assert "olive-ai 0.13.0" in index, "the built artifact's tool version names Olive"

    again = edgectl("apply", str(manifests), env=home).stdout
    assert "no changes" in again.lower(), again

    # Without Olive: the build step says how to install it (the plan, which builds nothing, shows the build step).
    missing = edgectl("apply", str(manifests), env={**home, "EDGECTL_OLIVE_OVERLAY": str(tmp_path / "none")},
                      check=False)
    said = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "bash scripts/setup.sh olive" in said, said
