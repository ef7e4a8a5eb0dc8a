"""`edgectl export` end to end: the real CLI writes SmolLM2's GGUF and a Modelfile; the prompt Ollama would build
from that Modelfile (its TEMPLATE, SYSTEM and stop strings), run by llama.cpp on the exported file, answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from edgectl.builders.store import sha256_file
from edgectl.export import modelfile
from edgectl.export.chat_template import render_go

REPO = Path(__file__).resolve().parents[2]

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: pis}
spec:
  devices:
    - {name: pi5, profile: raspberry-pi-5, transport: {type: ssh, host: 127.0.0.1, user: pi}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: smollm2}
spec: {model: smollm2-135m-instruct, selector: {devices: [pi5]}, context_length: 1024}
"""


def test_export_writes_a_gguf_and_a_modelfile_whose_prompt_answers(tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text(FLEET)
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="200", NO_COLOR="1")
    out = tmp_path / "ollama"
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", "export", str(tmp_path / "fleet.yaml"), "-d", "pi5",
                        "--to", str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ollama create smollm2 -f {out / 'Modelfile'}" in r.stdout

    gguf = out / "smollm2-135m-instruct-q4_1.gguf"
    digest = r.stdout.split("sha256:")[1].split()[0]
    assert sha256_file(gguf) == f"sha256:{digest}"
    read = dict((k, v) for k, v in modelfile.parse((out / "Modelfile").read_text()) if k != "stop")
    stops = [v for k, v in modelfile.parse((out / "Modelfile").read_text()) if k == "stop"]
    assert read["model"] == f"./{gguf.name}" and read["num_ctx"] == "1024" and read["num_thread"] == "4"
    assert read["system"] == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert stops == ["<|im_end|>", "<|im_start|>"]

    # The prompts Ollama renders: without a system message the Modelfile's SYSTEM fills .System; with one (as the
    # README's example sends) the request's own.
    chat = [{"Role": "user", "Content": "What is the capital of France?"}]
    default = render_go(read["template"], {"System": read["system"], "Messages": chat})
    assert default.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    prompt = render_go(read["template"], {"System": "You are a helpful AI assistant.", "Messages": [
        {"Role": "system", "Content": "You are a helpful AI assistant."}] + chat})
    assert prompt == ("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nWhat is the "
                      "capital of France?<|im_end|>\n<|im_start|>assistant\n")
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=1024, n_threads=2, verbose=False)
    answer = llm.create_completion(prompt, max_tokens=24, temperature=0, stop=stops)["choices"][0]["text"]
    assert "Paris" in answer, answer

    # A second export is a cache hit and writes the same files.
    before = (out / "Modelfile").read_text()
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", "export", str(tmp_path / "fleet.yaml"), "-d", "pi5",
                        "--to", str(out)], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert r.returncode == 0 and (out / "Modelfile").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", gguf.name]
