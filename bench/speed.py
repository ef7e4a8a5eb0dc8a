"""The planner's speed estimate (edgectl/plan/speed.py) and the agent's enrolment benchmark
(edgectl_agent/benchmark.py) against the real runtimes on this machine, for every format built here.

    python bench/speed.py [--threads 1] [--formats gguf:Q4_1,gguf:Q8_0,openvino:INT4,onnx:INT4,mlx:INT4 | --missed]
                          [--repeat N] [--write]

--missed measures only the formats that missed a target on the last quiet run (GGUF Q8_0: its decode estimate;
ONNX GenAI INT4: its enrolment decode);
--repeat N repeats each artifact's enrolment and longer run N times on the same loaded model, and prints the spread
(min-max over the repeats) of every ratio and of the fitted factors: a factor is only as good as its spread.

In ONE run, so that every figure sees the same load on a shared machine:

1. This machine as the agent measures it at enrolment (edgectl_agent.benchmark.measure_device: memory bandwidth
   with every CPU, float32 matmul compute on every thread and on one), and what that cost.
2. SmolLM2-135M built by edgectl's builders (cached in the edgectl store) into each format, loaded by the agent's
   own runtime with --threads threads (llama.cpp, OpenVINO GenAI and ONNX GenAI take them; MLX's Linux CPU build
   has no thread setting and runs on one thread): the
   enrolment measurement exactly as the agent runs it at a first activation (edgectl_agent.benchmark.
   measure_artifact: medians of up to 3 runs of a ~128-token prompt and 32-128 decoded tokens, sized from its
   warm-up run) and its cost, then a
   longer run with the same estimator (5 runs, 128 decoded tokens each), whose rates are "measured".
3. Per artifact: the plan's estimate from the device figures of step 1 (edgectl.plan.speed.estimate_speed, the
   threads each runtime really uses) against the measured rates (target within 25%), the enrolment measurement
   against the longer run (target within 10%), and the enrolment cost (target: device + artifact <= 10 s); each
   with a PASS/MISS verdict. Then, per runtime and format, measured / the formula before its runtime factor (the
   quant's kernel factor, QUANT_COMPUTE_FACTORS, stays in: it is part of decode's compute term): the factors a quiet
   rerun would write into RUNTIME_FACTORS, the same for every quant of a runtime where the kernel factors are
   right. A quant's kernel factor is its prefill's "measured / formula" over the calibration quant's (Q4_1).

The load is recorded before, during (each artifact) and after: on a shared machine absolute figures are noisy,
and llama.cpp's threads spin at a barrier per layer waiting for a thread that lost its core, so at 2 threads on a
loaded 2-CPU machine decode falls 5-10x; the default --threads 1 holds up better. Prints the tables; with --write
replaces the speed section of docs/benchmarks.md. A run took 7 minutes at load 15-22 (each longer run is capped at
60 s; MLX's Linux CPU build reaches the cap), about 3 on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402

GB = 1e9
FORMATS = "gguf:Q4_1,gguf:Q8_0,openvino:INT4,onnx:INT4,mlx:INT4"
MISSED = "gguf:Q8_0,onnx:INT4"  # the formats that missed a target on the last quiet run (docs/benchmarks.md)
ESTIMATE_WITHIN = 0.25
ENROLMENT_WITHIN = 0.10
ENROLMENT_BUDGET_S = 10.0


def load_model(runtime_name: str, path: Path, art, threads: int, context: int):
    """The artifact loaded by the agent's own runtime, as the agent loads it for a deployment with ``threads``."""
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.runtimes import default_runtimes

    desired = DesiredDeployment(name="bench", runtime=runtime_name, context_length=context, threads=threads,
                                artifact=ArtifactRef(digest=art.digest, format=art.format, quant=art.quant,
                                                     size_bytes=art.size_bytes, model=art.model, layout=art.layout))
    model = default_runtimes()[runtime_name].load(path, desired)
    model.smoke("The capital of France is", 4)  # what the agent runs before it measures
    return model


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def verdict(ratio: float | None, within: float) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f} {'PASS' if abs(ratio - 1) <= within else 'MISS'}"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def spread(results: list[dict], verdicts: list[tuple[str, str, str]]) -> str:
    """Per artifact and target over the --repeat runs: the median ratio, its min-max, and the verdict on the median;
    then the fitted factors' min-max (what a factor fitted on one of these runs could have been)."""
    import statistics

    lines = ["Over the repeats (median, min-max; the verdict is the median's):"]
    by_artifact: dict[str, list[dict]] = {}
    for r in results:
        by_artifact.setdefault(r["artifact"], []).append(r)
    for artifact, runs in by_artifact.items():
        labels = {r["label"] for r in runs}
        for what in ("estimate decode", "estimate prefill", "enrolment decode", "enrolment prefill"):
            xs = [float(v.split()[0]) for a, w, v in verdicts if a in labels and w == what and v != "-"]
            if xs:
                within = ESTIMATE_WITHIN if what.startswith("estimate") else ENROLMENT_WITHIN
                m = statistics.median(xs)
                lines.append(f"- {artifact} {what}: {verdict(m, within)} (min {min(xs):.2f}, max {max(xs):.2f})")
        decode = [ratio(r["longer"].decode_tokens_per_s, r["formula"][0]) or 0 for r in runs]
        prefill = [ratio(r["longer"].prefill_tokens_per_s, r["formula"][1]) or 0 for r in runs]
        lines.append(f"- {artifact} ({runs[0]['runtime']}) factors: decode x{statistics.median(decode):.3f} "
                     f"(min {min(decode):.3f}, max {max(decode):.3f}), prefill x{statistics.median(prefill):.3f} "
                     f"(min {min(prefill):.3f}, max {max(prefill):.3f})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--formats", default=FORMATS)
    ap.add_argument("--missed", action="store_true", help=f"only {MISSED}")
    ap.add_argument("--repeat", type=int, default=1, help="enrolment + longer run this many times per artifact")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--write", action="store_true", help="replace the speed section of docs/benchmarks.md")
    args = ap.parse_args()
    if args.missed:
        args.formats = MISSED

    from edgectl.builders import ArtifactStore, build
    from edgectl.builders.registry import builder_for
    from edgectl.load import load_paths
    from edgectl.paths import store_dir
    from edgectl.plan import speed
    from edgectl.spec import Recipe
    from edgectl_agent.benchmark import measure_artifact, measure_device

    start_load = loadavg()
    spec = load_paths([REPO / "manifests" / "fleet.yaml"])
    model = spec.models["smollm2-135m-instruct"]
    arch = model.spec.architecture
    store = ArtifactStore(Path(os.environ.get("EDGECTL_BENCH_STORE", store_dir())))
    cpus = os.cpu_count() or 1

    device = measure_device(cpus, 8 * 2**30)
    per_thread = device.thread_compute_flops_per_s
    hw = speed.Hardware(bandwidth=device.memory_bandwidth_bytes_per_s,
                        compute=per_thread * cpus if per_thread else device.compute_flops_per_s,
                        cores=cpus, basis="measured here", os="linux",
                        thread_bandwidth=device.thread_memory_bandwidth_bytes_per_s or 0.0)
    print(f"load {start_load}; device as measured at enrolment: {hw.bandwidth / GB:.1f} GB/s ({cpus} threads), "
          f"{hw.thread_bandwidth / GB:.1f} GB/s (1 thread), "
          f"{(per_thread or 0) / GB:.1f} GFLOPS per thread ({device.compute_flops_per_s / GB:.1f} on every "
          f"thread), in {device.seconds:.2f} s", flush=True)

    results = []
    for item in args.formats.split(","):
        fmt, quant = item.split(":")
        art, _ = build(Recipe(model=model.name, format=fmt, kind="llm", quant=quant, source_precision="Q4_1"),
                       model, store)
        runtime = builder_for(fmt, "llm").runtime
        llm = load_model(runtime, store.local_path(art), art, args.threads, args.context)
        threads = speed.decode_threads(runtime, args.threads, cpus)
        batch = speed.prefill_threads(runtime, args.threads, cpus, {})
        try:
            for rep in range(args.repeat):
                load_before = loadavg()
                enrol = measure_artifact(llm, digest=art.digest, runtime=runtime, threads=args.threads,
                                         context_length=args.context)
                longer = measure_artifact(llm, digest=art.digest, runtime=runtime, threads=args.threads,
                                          context_length=args.context, budget_s=60, decode_tokens=128, runs=5,
                                          first_run=3)
                est = speed.estimate_speed(arch, art.size_bytes, hw, threads=threads,
                                           prompt_tokens=longer.prompt_tokens, runtime=runtime, quant=quant,
                                           prefill_threads=batch)
                decode_f, prefill_f, _ = speed.factors(runtime, quant, hw.os)
                label = f"{fmt} {quant}" + (f" #{rep + 1}" if args.repeat > 1 else "")
                results.append(dict(label=label, artifact=f"{fmt} {quant}", runtime=runtime, quant=quant, art=art,
                                    enrol=enrol, longer=longer, est=est, threads=threads,
                                    load=f"{load_before} / {loadavg()}",
                                    formula=(est.decode_tokens_per_s / decode_f, est.prefill_tokens_per_s / prefill_f)))
                print(f"{label} ({runtime}, {threads} thread(s)): decode est {est.decode_tokens_per_s:.1f} / "
                      f"measured {longer.decode_tokens_per_s or 0:.1f} / enrolment {enrol.decode_tokens_per_s or 0:.1f}"
                      f"; prefill est {est.prefill_tokens_per_s:.0f} / measured {longer.prefill_tokens_per_s:.0f} / "
                      f"enrolment {enrol.prefill_tokens_per_s:.0f}; enrolment {enrol.seconds:.2f} s, {enrol.decode_tokens} tokens "
                      f"decoded per run; load "
                      f"{loadavg()}", flush=True)
        finally:
            llm.close()
    end_load = loadavg()

    rows, verdicts = [], []
    for r in results:
        est, longer, enrol = r["est"], r["longer"], r["enrol"]
        checks = [("estimate decode", ratio(est.decode_tokens_per_s, longer.decode_tokens_per_s), ESTIMATE_WITHIN),
                  ("estimate prefill", ratio(est.prefill_tokens_per_s, longer.prefill_tokens_per_s), ESTIMATE_WITHIN),
                  ("enrolment decode", ratio(enrol.decode_tokens_per_s, longer.decode_tokens_per_s),
                   ENROLMENT_WITHIN),
                  ("enrolment prefill", ratio(enrol.prefill_tokens_per_s, longer.prefill_tokens_per_s),
                   ENROLMENT_WITHIN)]
        cost = device.seconds + enrol.seconds
        verdicts += [(r["label"], what, verdict(x, within)) for what, x, within in checks]
        verdicts.append((r["label"], "enrolment cost", f"{cost:.2f} s "
                         f"{'PASS' if cost <= ENROLMENT_BUDGET_S else 'MISS'}"))
        rows.append([r["label"], r["runtime"], r["threads"], f"{r['art'].size_bytes / 2**20:.0f} MiB",
                     f"{est.decode_tokens_per_s:.1f}", f"{longer.decode_tokens_per_s or 0:.1f}",
                     f"{enrol.decode_tokens_per_s or 0:.1f}", f"{est.prefill_tokens_per_s:.0f}",
                     f"{longer.prefill_tokens_per_s:.0f}", f"{enrol.prefill_tokens_per_s:.0f}",
                     *(verdict(x, within) for _, x, within in checks), f"{cost:.2f} s", r["load"]])
    body = (f"Load: {start_load} at the start, {end_load} at the end (1, 5, 15 min; per artifact: before / after "
            f"its measurements in the last column). The machine as the agent measures it at enrolment: "
            f"{hw.bandwidth / GB:.1f} GB/s (numpy copies, one per CPU; {hw.thread_bandwidth / GB:.1f} GB/s on one "
            f"thread), {(per_thread or 0) / GB:.1f} GFLOPS per "
            f"thread (float32 matmul, BLAS held to one thread), in {device.seconds:.2f} s. Each artifact is "
            f"SmolLM2-135M-Instruct built by edgectl's builders, loaded by the agent's own runtime; llama.cpp with "
            f"{args.threads} thread(s) (n_threads_batch too), OpenVINO GenAI and ONNX GenAI with the same; MLX's Linux CPU "
            f"build has no thread setting (one thread). *Estimate*: edgectl/plan/speed.py from those device figures and the threads each runtime uses. "
            f"*Measured*: the agent's estimator (medians) over a longer run: 5 runs of a "
            f"~{results[0]['longer'].prompt_tokens}-token prompt, 128 decoded tokens each. *Enrolment*: what the agent "
            f"measures at a first activation (up to 3 runs, 32-128 decoded tokens each as 0.75 s holds at its warm-up's rate) and its cost with the device "
            f"measurement. Targets: estimate within {ESTIMATE_WITHIN:.0%} of measured, enrolment within "
            f"{ENROLMENT_WITHIN:.0%} of the longer run, enrolment cost <= {ENROLMENT_BUDGET_S:.0f} s.\n\n"
            + table(["artifact", "runtime", "threads", "size", "decode est.", "measured", "enrolment",
                     "prefill est.", "measured", "enrolment", "est./meas. decode", "est./meas. prefill",
                     "enrol./meas. decode", "enrol./meas. prefill", "enrolment cost", "load before / after"], rows))
    missed = [v for v in verdicts if "MISS" in v[2]]
    body += (f"\n\nVerdict: {len(verdicts) - len(missed)} of {len(verdicts)} targets met"
             + (f"; missed: {', '.join(f'{a} {w} ({v})' for a, w, v in missed)}." if missed else "."))
    body += ("\n\nMeasured / the formula before its runtime factor (what RUNTIME_FACTORS would be from this run; "
             "a quant's prefill figure over Q4_1's is its QUANT_COMPUTE_FACTORS kernel factor): " + ", ".join(
                 f"{r['label']} ({r['runtime']}) decode x{ratio(r['longer'].decode_tokens_per_s, r['formula'][0]) or 0:.3f}"
                 f", prefill x{ratio(r['longer'].prefill_tokens_per_s, r['formula'][1]) or 0:.3f}" for r in results)
             + ".")
    if args.repeat > 1:
        body += "\n\n" + spread(results, verdicts)
    print(body)
    print("\n" + "\n".join(f"{a:>17}  {w:<18} {v}" for a, w, v in verdicts))
    if args.write:
        write_section("speed", "Expected tokens/s: estimate vs measured", body,
                      dists=("llama_cpp_python", "openvino-genai", "onnxruntime-genai", "mlx-lm"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
