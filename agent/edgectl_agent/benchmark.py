"""The enrolment micro-benchmark: what this device really does, measured once and kept in ``<root>/benchmark.json``.

- Device figures, measured the first time the agent reports its facts: sustained memory bandwidth (copies of a
  buffer twice the last-level cache, one per CPU, median of a few repeats; and one thread's copy) and, with numpy,
  float32 matmul
  compute on every thread and on one (with threadpoolctl: the per-thread rate the estimate scales by a
  deployment's threads). Under a second on a small board; reported in the facts and as Prometheus gauges.
- Per artifact, the first time it is activated with given threads (after its smoke inference, before it is
  switched in, so no request competes with it): the real prefill rate of a ~``PROMPT_TOKENS``-token prompt and the
  decode rate of up to ``DECODE_TOKENS`` tokens, through the runtime already loaded, with the deployment's threads:
  a warm-up probe, then medians over up to ``RUNS`` runs (bench/speed.py checks them against a longer run). Each
  run decodes what ``DECODE_RUN_S`` holds at the warm-up's rate (32 where no warm-up runs), from ``DECODE_TOKENS`` up to
  ``LONG_DECODE_TOKENS`` (the longer run's length: the same token positions, a window 4x longer).
  Bounded by ``ARTIFACT_BUDGET_S``: decoding stops at the deadline, and a run starts only while the one before it
  would still fit.

edgectl's planner uses these figures instead of the profile's (edgectl/plan/speed.py): a device's measured
bandwidth in every estimate, and an artifact's measured rates directly, marked "measured".
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from edgectl_agent.api import ArtifactSpeed, DeviceBenchmark
from edgectl_agent.errors import BadRequest
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel

log = logging.getLogger(__name__)

FILE = "benchmark.json"
PROMPT_TOKENS = 128  # the prompt the artifact benchmark aims at (capped at half the context)
DECODE_TOKENS = 32  # the fewest tokens a run decodes (the budget may stop it sooner on a slow device)
# What a run decodes where the device is fast enough: the longer run's of bench/speed.py (5 runs x 128 tokens).
# With 32, ONNX GenAI's enrolment decode read 1.03-1.33x the longer run's on quiet runs here: ~90 gaps in ~0.5 s
# of decoding, at the first 32 positions after the prompt only, against ~640 gaps over 4 s.
LONG_DECODE_TOKENS = 128
WARMUP_TOKENS = 8  # the warm-up run's decode: its median gap sizes the runs' decode (DECODE_RUN_S)
PROBE_WORDS = 4  # the probe run that sizes the prompt to the device's speed: a few tokens
RUNS = 3  # the medians of up to this many runs
# Prefill samples: each run gives one; where time is left, prompt-only runs (one token) add more, up to this many.
# A ~120-token prefill takes 80 ms on OpenVINO here, and single runs of it spread +-12%: a median of 3 is not enough.
PREFILL_RUNS = 7
ARTIFACT_BUDGET_S = 6.0  # the device benchmark takes well under 2 s: together under 10 s (counting included)
DECODE_RUN_S = ARTIFACT_BUDGET_S / 8  # the decode time a run is sized to (RUNS of them: well within the budget)
BANDWIDTH_REPEATS = 5
KEEP_ARTIFACTS = 32  # measurements kept, newest first (older artifacts are long gone from the store)
# English prose the runtimes' tokenizers cut at ~1.3 tokens per word; the model continues it for DECODE_TOKENS.
PROMPT_TEXT = ("The old harbour town woke slowly. Fishermen carried nets down to the boats, the baker opened his "
               "shutters, and children ran along the sea wall shouting at the gulls. ")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def last_level_cache_bytes(sysfs: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """Size of the largest CPU cache sysfs lists (None where it lists none: macOS, containers hiding it)."""
    sizes = []
    for index in sysfs.glob("index*"):
        try:
            raw = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(raw[-1:], 1)
        digits = raw.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes, default=None)


def buffer_bytes(llc: int | None, available: int) -> int:
    """Bytes copied per repeat: twice the last-level cache (so the copy streams from RAM), at least 64 MiB, and at
    most a sixteenth of the available RAM (source and destination both live at once)."""
    want = max(64 * 2**20, 2 * (llc or 32 * 2**20))
    return max(8 * 2**20, min(want, available // 16))


def memory_bandwidth(threads: int, total: int, repeats: int = BANDWIDTH_REPEATS) -> float:
    """Median bytes/s (read + written) of ``threads`` concurrent copies of ``total / threads`` bytes each: numpy
    releases the GIL while it copies; without numpy, one memoryview copy (a single thread)."""
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is None:
        src, dst = bytearray(total), bytearray(total)
        view = memoryview(dst)
        view[:] = src  # touch every page before timing
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            view[:] = src
            runs.append(2 * total / (time.perf_counter() - t))
        return statistics.median(runs)
    n = total // threads // 8
    srcs = [np.ones(n) for _ in range(threads)]
    dsts = [np.zeros(n) for _ in range(threads)]  # zeros: pages are mapped at the warm-up copy below, not timed
    for d, s in zip(dsts, srcs):
        np.copyto(d, s)
    runs = []
    for _ in range(repeats):
        workers = [threading.Thread(target=np.copyto, args=(d, s)) for d, s in zip(dsts, srcs)]
        t = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        runs.append(2 * 8 * n * threads / (time.perf_counter() - t))
    return statistics.median(runs)


def matmul_flops(n: int = 384, repeats: int = 5) -> float | None:
    """Median FLOP/s of a float32 ``n`` x ``n`` matmul (numpy's BLAS, all its threads); None without numpy."""
    try:
        import numpy as np
    except ImportError:
        return None
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a  # warm-up: BLAS starts its threads
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        runs.append(2 * n**3 / (time.perf_counter() - t))
    return statistics.median(runs)


def thread_matmul_flops(n: int = 384, repeats: int = 5) -> float | None:
    """:func:`matmul_flops` with BLAS held to ONE thread (threadpoolctl): the compute rate per thread the speed
    estimate scales by the threads a deployment runs with. None without numpy or threadpoolctl. On a busy device a
    one-thread figure holds up where an all-threads one measures its threads' waits at each barrier."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    with threadpool_limits(limits=1):
        return matmul_flops(n, repeats)


def measure_device(cpus: int, available_ram: int) -> DeviceBenchmark:
    start = time.perf_counter()
    size = buffer_bytes(last_level_cache_bytes(), available_ram)
    bandwidth = memory_bandwidth(cpus, size)
    one_thread = memory_bandwidth(1, size) if cpus > 1 else bandwidth
    compute = matmul_flops()
    per_thread = thread_matmul_flops()
    return DeviceBenchmark(memory_bandwidth_bytes_per_s=bandwidth, compute_flops_per_s=compute,
                           thread_memory_bandwidth_bytes_per_s=one_thread, thread_compute_flops_per_s=per_thread,
                           threads=cpus,
                           seconds=time.perf_counter() - start, measured_at=_now())


def _has_text(chunk: dict) -> bool:
    return any(c.get("text") or (c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])


def run_rates(model: LoadedModel, prompt: str, decode_tokens: int, deadline: float
              ) -> tuple[float, int, list[float]]:
    """(seconds to the first token, tokens streamed, the seconds between successive tokens) of one streamed
    completion of ``prompt``; decoding stops at ``deadline`` (perf_counter)."""
    t = time.perf_counter()  # before the call: a runtime may prefill before it hands back the stream
    stream = model.complete(prompt, GenerationParams(max_tokens=decode_tokens, temperature=0.0), stream=True)
    first = None
    times: list[float] = []
    try:
        for chunk in stream:
            if not _has_text(chunk):
                continue
            times.append(time.perf_counter())
            first = first or times[-1]
            if times[-1] > deadline:
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    if first is None:
        return time.perf_counter() - t, 0, []
    return first - t, len(times), [b - a for a, b in zip(times, times[1:]) if b > a]


def prompt_for(context_length: int, tokens: int = PROMPT_TOKENS, *, run: int = 0) -> str:
    """Prose of about ``min(tokens, context_length / 2)`` tokens (~0.75 words per token). Each ``run`` starts at
    another word: a runtime that caches the previous prompt's prefix (llama.cpp) must process it all again."""
    want_words = max(int(min(tokens, context_length // 2) * 0.75), PROBE_WORDS)
    text = PROMPT_TEXT.split()
    words = (text * ((want_words + run * 5) // len(text) + 2))[run * 5:]
    return " ".join(words[:want_words])


def count_tokens(model: LoadedModel, prompt: str) -> int | None:
    """Tokens of ``prompt`` as the runtime counts them: its tokenizer where it has one apart (the runtimes on
    TextGenModel), else the usage of a one-token completion (llama.cpp reuses the prompt it just processed: near
    free)."""
    count = getattr(model, "_count", None)
    if count is not None:
        return int(count(prompt))
    usage = model.complete(prompt, GenerationParams(max_tokens=1, temperature=0.0))
    return (usage.get("usage") or {}).get("prompt_tokens") if isinstance(usage, dict) else None


def prefill_at(tokens: int, points: list[tuple[int, float]]) -> float:
    """Prefill tokens/s of a ``tokens``-token prompt, from the times to first token of shorter prompts ``(tokens,
    seconds)``: time = a constant (the runtime's per-request work: MLX's is ~0.5 s here) + tokens / the marginal
    rate, the least-squares line through the points. Where they give no rising line (noise, one size only), the
    longest prompt's own rate. Pure; unit-tested."""
    longest = max(points)
    xs, ys = [n for n, _ in points], [t for _, t in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mx) ** 2 for x in xs)
    per_token = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / spread if spread else 0.0
    if per_token <= 0:
        return longest[0] / longest[1]
    constant = max(0.0, my - per_token * mx)
    return tokens / (constant + tokens * per_token)


def decode_tokens_for(warmup_gaps: list[float], run_s: float = DECODE_RUN_S) -> int:
    """Tokens a run decodes: what ``run_s`` holds at the warm-up's median time per token, from DECODE_TOKENS to
    LONG_DECODE_TOKENS; DECODE_TOKENS where the warm-up did not run or decoded fewer than two tokens.
    Pure; unit-tested."""
    if not warmup_gaps:
        return DECODE_TOKENS
    return max(DECODE_TOKENS, min(LONG_DECODE_TOKENS, int(run_s / statistics.median(warmup_gaps))))


def measure_artifact(model: LoadedModel, *, digest: str, runtime: str, threads: int | None, context_length: int,
                     budget_s: float = ARTIFACT_BUDGET_S, prompt_tokens: int = PROMPT_TOKENS,
                     decode_tokens: int | None = None, runs: int = RUNS, first_run: int = 0
                     ) -> ArtifactSpeed | None:
    """Prefill and decode rates of a loaded (and smoke-tested) LLM, as medians over up to ``runs`` runs:
    prefill = the median of the runs' prompt tokens / time to first token, decode = 1 / the median time between
    two streamed tokens of all runs (a token delayed by other work on the device moves a median little, a mean
    much). A run starts only while the one before it would still fit in the budget. None for a model that
    generated nothing. Runs are numbered from ``first_run``: each gets its own prompt (:func:`prompt_for`).
    ``decode_tokens``: what each run decodes; None (the agent's enrolment) sizes it from the warm-up's or the
    probe's decode (:func:`decode_tokens_for`).

    Three things keep a short enrolment close to a long run (bench/speed.py checks it):

    - a warm-up run of the full-size prompt where it is cheap (its predicted prefill within a twentieth of the
      budget): OpenVINO's and ONNX Runtime's first run of a new prompt length builds its kernels, and was up to a
      third slower than later runs;
    - each run decodes as many tokens as a longer run where the device is fast enough (:func:`decode_tokens_for`):
      the median then covers the same token positions and a 4x longer window of the device's time;
    - where the device is too slow to prefill the full prompt in a fifth of the budget (MLX's Linux CPU build: ~10
      tokens/s), a second probe 4x longer gives the time per token, the prompt is sized on that line to a
      quarter of the budget, and the rate reported is the full-size prompt's, from the line through the probes'
      and the runs' times (:func:`prefill_at`): a short prompt's rate is mostly the runtime's constant per-request
      time."""
    start = time.perf_counter()
    deadline = start + budget_s
    want = int(min(prompt_tokens, context_length // 2))
    words = max(int(want * 0.75), PROBE_WORDS)
    # A prefill cannot be stopped half-way: a probe of PROBE_WORDS words (also the warm-up of the prompt path) sizes
    # the prompt so that its prefill takes at most a fifth of the budget (a big model on a slow CPU gets a shorter
    # prompt, never a longer wait). Its token count (llama.cpp reuses the prompt it just processed: near free) gives
    # the tokenizer's tokens per word, so that the prompt is half the context in tokens, whatever the vocabulary.
    probe = prompt_for(context_length, int(PROBE_WORDS / 0.75), run=first_run + 7)
    # One token only: it times the prefill. MLX's stream computes the next token before it hands over the current
    # one, so a probe that decodes more reads a longer time to the first token, and the line through the probes
    # then gave a prefill 1.14-1.18x the longer run's (bench/speed.py).
    probe_s, _, _ = run_rates(model, probe, 1, deadline)
    probe_tokens = count_tokens(model, probe) or PROBE_WORDS
    per_word = probe_tokens / PROBE_WORDS
    full_words = max(PROBE_WORDS, min(words, int(want / per_word)))
    words = full_words
    probes = [(probe_tokens, probe_s)]  # (prompt tokens, seconds to the first token)
    if probe_s > 0 and probe_s * full_words / PROBE_WORDS > budget_s / 5:
        # Too slow for the full prompt in a fifth of the budget (MLX's Linux CPU build). The probe's time is mostly
        # the runtime's constant per request, so a second probe 4x longer gives the time per token, and the prompt
        # is sized on that line to a quarter of the budget (never above the full prompt).
        longer = prompt_for(context_length, int(4 * PROBE_WORDS / 0.75), run=first_run + 9)
        longer_s, _, _ = run_rates(model, longer, 1, deadline)
        probes.append((count_tokens(model, longer) or 4 * PROBE_WORDS, longer_s))
        (n1, t1), (n2, t2) = probes
        per_token = (t2 - t1) / (n2 - n1) if n2 > n1 and t2 > t1 else t2 / n2
        fits = (budget_s / 4 - max(0.0, t1 - n1 * per_token)) / per_token
        words = max(PROBE_WORDS, min(full_words, int(fits / per_word)))
    warmup_gaps: list[float] = []
    if probe_s > 0 and probe_s * words / PROBE_WORDS <= budget_s / 20:
        try:  # warm-up
            _, _, warmup_gaps = run_rates(model, prompt_for(context_length, int(words / 0.75), run=first_run + 8),
                                          WARMUP_TOKENS, deadline)
        except BadRequest:
            pass  # the runs below halve the prompt until it fits
    if decode_tokens is None:
        decode_tokens = decode_tokens_for(warmup_gaps)
    done: list[tuple[int, tuple[float, int, list[float]]]] = []  # (prompt tokens, run_rates) per run
    last_s = 0.0
    tried = 0
    while len(done) < runs and tried < runs + 4 and (not done or time.perf_counter() + last_s < deadline):
        tried += 1
        prompt = prompt_for(context_length, int(words / 0.75), run=first_run + len(done))
        began = time.perf_counter()
        try:
            rates = run_rates(model, prompt, decode_tokens, deadline)
        except BadRequest:  # a tokenizer that cuts prose finer than assumed: halve the prompt until it fits
            if words <= PROBE_WORDS:
                return None
            words //= 2
            full_words = min(full_words, words)
            continue
        # counted right after its run: llama.cpp reuses the prompt it just processed (near free)
        done.append((count_tokens(model, prompt) or 0, rates))
        last_s = time.perf_counter() - began
    measured = [(n, r) for n, r in done if r[1] and n and r[0] > 0]
    if not measured:
        return None
    prefills = [(n, r[0]) for n, r in measured]  # (prompt tokens, seconds to the first token)
    while words == full_words and len(prefills) < PREFILL_RUNS and last_s > 0:
        prompt = prompt_for(context_length, int(words / 0.75), run=first_run + len(prefills))
        began = time.perf_counter()
        if began + 2 * statistics.median(t for _, t in prefills) > deadline:
            break
        ttft, n_out, _ = run_rates(model, prompt, 1, deadline)
        if n_out:
            prefills.append((count_tokens(model, prompt) or 0, ttft))
    prompt_size = int(statistics.median_low([n for n, _ in prefills]))
    prefill = statistics.median([n / t for n, t in prefills if n and t > 0])
    if words < full_words:  # cut to fit the budget: the full prompt's rate, from the line through all sizes timed
        prompt_size = int(full_words * per_word)
        prefill = prefill_at(prompt_size, probes + [(n, r[0]) for n, r in measured])
    gaps = [g for _, r in measured for g in r[2]]
    return ArtifactSpeed(digest=digest, runtime=runtime, threads=threads, prompt_tokens=prompt_size,
                         prefill_tokens_per_s=prefill,
                         decode_tokens=max(r[1] for _, r in measured),
                         decode_tokens_per_s=1 / statistics.median(gaps) if gaps else None,
                         seconds=time.perf_counter() - start, measured_at=_now())


class Benchmarks:
    """The device's benchmark record in ``<root>/benchmark.json``: measured once, then read back."""

    def __init__(self, root: Path, *, enabled: bool = True) -> None:
        self.path = root / FILE
        self.enabled = enabled
        self._lock = threading.Lock()
        self._record: DeviceBenchmark | None = None
        self._loaded = False

    def current(self) -> DeviceBenchmark | None:
        """What was measured so far (nothing is measured here: for /metrics)."""
        with self._lock:
            return self._load()

    def device(self, cpus: int, available_ram: int) -> DeviceBenchmark | None:
        """The device figures, measured now if never before (the agent's first report); None when disabled."""
        if not self.enabled:
            return self.current()
        with self._lock:
            record = self._load()
            if record is not None and record.memory_bandwidth_bytes_per_s is not None:
                return record
            measured = measure_device(cpus, available_ram)
            if record is not None:
                measured = measured.model_copy(update={"artifacts": record.artifacts})
            self._save(measured)
            log.info("enrolment benchmark: memory bandwidth %.1f GB/s (%d threads), compute %s, in %.2f s",
                     measured.memory_bandwidth_bytes_per_s / 1e9, cpus,
                     f"{measured.compute_flops_per_s / 1e9:.0f} GFLOPS" if measured.compute_flops_per_s else "-",
                     measured.seconds)
            return measured

    def artifact(self, digest: str, runtime: str, threads: int | None) -> ArtifactSpeed | None:
        record = self.current()
        if record is None:
            return None
        return next((a for a in record.artifacts
                     if a.digest == digest and a.runtime == runtime and a.threads == threads), None)

    def measure_artifact_once(self, model: LoadedModel, *, digest: str, runtime: str, threads: int | None,
                              context_length: int,
                              measure: Callable[..., ArtifactSpeed | None] = measure_artifact) -> None:
        """Measure a just-loaded LLM's rates unless this artifact was measured with these threads before. Never
        fails the activation: a benchmark that fails is logged and skipped."""
        if not self.enabled or getattr(model, "kind", "llm") != "llm" or self.artifact(digest, runtime, threads):
            return
        try:
            speed = measure(model, digest=digest, runtime=runtime, threads=threads, context_length=context_length)
        except Exception as e:  # noqa: BLE001 - any runtime error: the model passed its smoke test, serve it
            log.warning("enrolment benchmark of %s failed, skipped: %s: %s", digest, type(e).__name__, e)
            return
        if speed is None:
            return
        with self._lock:
            record = self._load() or DeviceBenchmark(threads=os.cpu_count() or 1, seconds=0.0, measured_at=_now())
            kept = [a for a in record.artifacts
                    if not (a.digest == digest and a.runtime == runtime and a.threads == threads)]
            self._save(record.model_copy(update={"artifacts": [speed, *kept][:KEEP_ARTIFACTS]}))
        log.info("enrolment benchmark of %s (%s, %s threads): prefill %.0f tokens/s (%d-token prompt), decode %s "
                 "tokens/s, in %.2f s", digest, runtime, threads or "default", speed.prefill_tokens_per_s,
                 speed.prompt_tokens,
                 f"{speed.decode_tokens_per_s:.1f}" if speed.decode_tokens_per_s else "-", speed.seconds)

    def _load(self) -> DeviceBenchmark | None:
        if not self._loaded:
            self._loaded = True
            try:
                self._record = DeviceBenchmark.model_validate(json.loads(self.path.read_text()))
            except FileNotFoundError:
                self._record = None
            except (OSError, ValueError) as e:  # a damaged record is measured again, not trusted
                log.warning("ignoring %s (%s): the device is measured again", self.path, e)
                self._record = None
        return self._record

    def _save(self, record: DeviceBenchmark) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(record.model_dump_json(indent=1))
        os.replace(tmp, self.path)
        self._record = record
