"""The planner's speed estimate (edgectl/plan/speed.py) and the agent's enrolment benchmark
(edgectl_agent/benchmark.py) against the real runtimes on this machine, for every format built here.

    python bench/speed.py [--threads 1] [--formats gguf:Q4_1,gguf:Q8_0,openvino:INT4,onnx:INT4,mlx:INT4] [--write]

In ONE run, so that every figure sees the same load on a shared machine:

1. This machine's memory bandwidth and compute as the agent measures them at enrolment (edgectl_agent.benchmark:
   concurrent numpy copies, median; float32 matmul), and how long that took.
2. SmolLM2-135M built by edgectl's builders (cached in the edgectl store) into each format, loaded by the agent's
   own runtime with --threads threads: the enrolment measurement (a ~128-token prompt, 32 decoded tokens: what the
   agent runs at a first activation, and its cost) and a longer run (the same prompt, 128 decoded tokens, best of
   3), whose rates are "measured".
3. Per artifact: the estimate from the measured figures (the formula, not the profile: the ratio checks the
   formula), the calibrated estimate (the runtime's other artifact measured on this machine calibrates it, as the
   planner does once a device measured one: edgectl.plan.speed.device_calibration), and the enrolment measurement
   against the longer run (target within 10%).

With --threads 1 (the default) the figures hold up on a loaded machine: one thread gets its share of a core, while
llama.cpp's threads spin at a barrier per layer waiting for a thread that lost its core (decode then falls 5-10x).
Prints tables; with --write replaces the speed section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402

GB = 1e9
FORMATS = "gguf:Q4_1,gguf:Q8_0,openvino:INT4,onnx:INT4,mlx:INT4"


def compute_flops(threads: int) -> float:
    """float32 matmul FLOP/s with BLAS limited to ``threads`` (the inference threads), median of 5."""
    from threadpoolctl import threadpool_limits

    from edgectl_agent.benchmark import matmul_flops

    with threadpool_limits(limits=threads):
        return matmul_flops(512)


def load(runtime_name: str, path: Path, art, threads: int, context: int):
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.runtimes import default_runtimes

    # llama.cpp prefills with every CPU unless told (n_threads_batch): the bench holds it to the same threads.
    options = {"n_threads_batch": threads} if runtime_name == "llamacpp" else {}
    desired = DesiredDeployment(name="bench", runtime=runtime_name, context_length=context, threads=threads,
                                runtime_options=options,
                                artifact=ArtifactRef(digest=art.digest, format=art.format, quant=art.quant,
                                                     size_bytes=art.size_bytes, model=art.model, layout=art.layout))
    model = default_runtimes()[runtime_name].load(path, desired)
    model.smoke("The capital of France is", 4)  # what the agent runs before it measures: the warm-up
    return model


def longer_run(model, threads: int, context: int):
    """The same prompt as at enrolment, 128 decoded tokens, best of 3 (a run disturbed by other work is slower)."""
    from edgectl_agent.benchmark import measure_artifact

    best = measure_artifact(model, digest="sha256:" + "0" * 64, runtime="x", threads=threads, context_length=context,
                            budget_s=90, decode_tokens=128, runs=3, first_run=2)
    return best, best.prefill_tokens_per_s


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", default=FORMATS)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--write", action="store_true", help="replace the speed section of docs/benchmarks.md")
    args = ap.parse_args()

    from edgectl.builders import ArtifactStore, build
    from edgectl.builders.registry import builder_for
    from edgectl.load import load_paths
    from edgectl.paths import store_dir
    from edgectl.plan import speed
    from edgectl.spec import Recipe
    from edgectl_agent.benchmark import buffer_bytes, last_level_cache_bytes, measure_artifact, memory_bandwidth

    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    spec = load_paths([REPO / "manifests" / "fleet.yaml"])
    model = spec.models["smollm2-135m-instruct"]
    arch = model.spec.architecture
    store = ArtifactStore(Path(os.environ.get("EDGECTL_BENCH_STORE", store_dir())))

    t0 = time.perf_counter()
    bw = memory_bandwidth(args.threads, buffer_bytes(last_level_cache_bytes(), 8 * 2**30))
    device_s = time.perf_counter() - t0
    flops = compute_flops(args.threads)
    hw = speed.Hardware(bandwidth=bw, compute=flops, cores=args.threads, basis="measured here")
    cpus = os.cpu_count() or 1
    # The runtimes that take no thread count use every CPU: their figures are the machine's.
    bw_all = memory_bandwidth(cpus, buffer_bytes(last_level_cache_bytes(), 8 * 2**30))
    # Compute: the one-thread figure x CPUs (a BLAS run on every CPU of a loaded machine measures its threads'
    # waits at each barrier, not the cores: 8.8 GFLOPS on 2 threads against 29.6 on one, in one run).
    flops_all = flops * cpus
    hw_all = speed.Hardware(bandwidth=bw_all, compute=flops_all, cores=cpus, basis="measured here")
    print(f"{uptime}\nmemory bandwidth {bw / GB:.1f} GB/s ({args.threads} thread(s), {device_s:.2f} s), "
          f"compute {flops / GB:.1f} GFLOPS; with {cpus} threads {bw_all / GB:.1f} GB/s, {flops_all / GB:.1f} GFLOPS",
          flush=True)

    results = []  # (label, runtime, artifact, enrolment, longer decode run, longer prefill, estimate)
    for item in args.formats.split(","):
        fmt, quant = item.split(":")
        art, _ = build(Recipe(model=model.name, format=fmt, kind="llm", quant=quant, source_precision="Q4_1"),
                       model, store)
        runtime = builder_for(fmt, "llm").runtime
        llm = load(runtime, store.local_path(art), art, args.threads, args.context)
        try:
            enrol = measure_artifact(llm, digest=art.digest, runtime=runtime, threads=args.threads,
                                     context_length=args.context)
            longer, prefill = longer_run(llm, args.threads, args.context)
        finally:
            llm.close()
        # As the planner does: llama.cpp is held to --threads here; the other runtimes use every CPU.
        est = speed.estimate_speed(arch, art.size_bytes, hw_all if runtime != "llamacpp" else hw,
                                   threads=args.threads, prompt_tokens=enrol.prompt_tokens, runtime=runtime,
                                   prefill_threads=speed.prefill_threads(runtime, args.threads, os.cpu_count() or 1,
                                                                         {"n_threads_batch": args.threads}))
        results.append((f"{fmt} {quant}", runtime, art, enrol, longer, prefill, est))
        print(f"{fmt} {quant} ({runtime}): decode est {est.decode_tokens_per_s:.1f} / measured "
              f"{_f(longer.decode_tokens_per_s)} (enrolment {_f(enrol.decode_tokens_per_s)}, {enrol.seconds:.2f} s); "
              f"prefill est {est.prefill_tokens_per_s:.0f} / measured {prefill:.0f} "
              f"(enrolment {enrol.prefill_tokens_per_s:.0f})", flush=True)

    def r(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "-"

    def ratio(a: float | None, b: float | None) -> list[float]:
        return [a / b] if a and b else []

    rows, ratios, enrol_ratios, cal_ratios = [], [], [], []
    for label, runtime, art, enrol, longer, prefill, est in results:
        # The runtime's other artifact measured here calibrates this one's estimate (as the planner does).
        other = next((x for x in results if x[1] == runtime and x[2].digest != art.digest), None)
        cal = None
        if other is not None:
            cal = speed.device_calibration(other[4], other[6], other[0]).apply(est)
            cal_ratios += ratio(cal.decode_tokens_per_s, longer.decode_tokens_per_s) + ratio(
                cal.prefill_tokens_per_s, prefill)
        ratios += ratio(est.decode_tokens_per_s, longer.decode_tokens_per_s) + ratio(est.prefill_tokens_per_s, prefill)
        enrol_ratios += ratio(enrol.decode_tokens_per_s, longer.decode_tokens_per_s) + ratio(
            enrol.prefill_tokens_per_s, prefill)
        rows.append([label, runtime, f"{art.size_bytes / 2**20:.0f} MiB",
                     f"{est.decode_tokens_per_s:.1f}", f"{cal.decode_tokens_per_s:.1f}" if cal else "-",
                     _f(longer.decode_tokens_per_s), r(est.decode_tokens_per_s, longer.decode_tokens_per_s),
                     r(cal.decode_tokens_per_s, longer.decode_tokens_per_s) if cal else "-",
                     f"{est.prefill_tokens_per_s:.0f}", f"{cal.prefill_tokens_per_s:.0f}" if cal else "-",
                     f"{prefill:.0f}", r(est.prefill_tokens_per_s, prefill),
                     r(cal.prefill_tokens_per_s, prefill) if cal else "-",
                     f"{_f(enrol.decode_tokens_per_s)} / {enrol.prefill_tokens_per_s:.0f}",
                     r(enrol.decode_tokens_per_s, longer.decode_tokens_per_s) + " / "
                     + r(enrol.prefill_tokens_per_s, prefill), f"{enrol.seconds:.2f} s"])
    body = (f"Load at the time: `{uptime}` (2 CPUs shared by several agents: the ratios matter, each figure "
            f"was measured in this one run). Memory bandwidth as the agent measures it at enrolment: "
            f"{bw / GB:.1f} GB/s ({args.threads} thread(s) of numpy copy, median, {device_s:.2f} s); compute "
            f"{flops / GB:.1f} GFLOPS (numpy float32 matmul, BLAS limited to {args.threads} thread(s)). Each artifact "
            f"is SmolLM2-135M-Instruct built by edgectl's builders, loaded by the agent's own runtime with "
            f"{args.threads} thread(s). *Estimate*: edgectl/plan/speed.py from the measured bandwidth and compute. "
            f"*Calibrated*: the estimate times measured/estimated of the same runtime's other artifact (what the "
            f"planner does once a device measured one). llama.cpp runs with {args.threads} thread(s) "
            f"(n_threads_batch too); the other runtimes take no thread count and use every CPU, so their estimates "
            f"use the bandwidth measured with every CPU and the one-thread compute x CPUs. *Measured*: best of 3 runs of a ~{results[0][3].prompt_tokens}"
            f"-token prompt and 128 decoded tokens. *Enrolment*: the agent's measurement at a first activation "
            f"(the same prompt, 32 decoded tokens, edgectl_agent.benchmark) and its cost. Targets: estimate/measured "
            f"0.75-1.25, enrolment/measured 0.9-1.1.\n\n"
            + table(["artifact", "runtime", "size", "decode est.", "calibrated", "measured", "est./meas.",
                     "cal./meas.", "prefill est.", "calibrated", "measured", "est./meas.", "cal./meas.",
                     "enrolment decode / prefill",
                     "enrolment / measured", "enrolment cost"], rows))
    inside = [0.75 <= x <= 1.25 for x in ratios]
    body += (f"\n\nEstimate/measured: {min(ratios):.2f}-{max(ratios):.2f} ({sum(inside)} of {len(inside)} figures "
             f"within 0.75-1.25)")
    if cal_ratios:
        body += (f"; calibrated/measured: {min(cal_ratios):.2f}-{max(cal_ratios):.2f} "
                 f"({sum(0.75 <= x <= 1.25 for x in cal_ratios)} of {len(cal_ratios)} within)")
    body += (f"; enrolment/measured: {min(enrol_ratios):.2f}-{max(enrol_ratios):.2f} "
             f"({sum(0.9 <= x <= 1.1 for x in enrol_ratios)} of {len(enrol_ratios)} within 0.9-1.1). Enrolment "
             f"cost: device {device_s:.2f} s + at most "
             f"{max(x[3].seconds for x in results):.2f} s per artifact (target: 10 s).")
    implied = {}
    for label, runtime, art, enrol, longer, prefill, est in results:
        implied.setdefault(runtime, (r(longer.decode_tokens_per_s, est.decode_tokens_per_s),
                                     r(prefill, est.prefill_tokens_per_s)))
    body += ("\n\nMeasured/estimated per runtime (its first artifact above): "
             + ", ".join(f"{k} decode x{d}, prefill x{p}" for k, (d, p) in implied.items()) + ".")
    print(body)
    if args.write:
        write_section("speed", "Expected tokens/s: estimate vs measured", body,
                      dists=("llama_cpp_python", "openvino-genai", "onnxruntime-genai", "mlx-lm"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
