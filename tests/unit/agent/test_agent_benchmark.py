"""The enrolment micro-benchmark (edgectl_agent.benchmark) in-process: measured once and kept, reported in the facts
and on /metrics, never failing an activation. The fake runtime stands in for a runtime here; the real counterpart
(llama.cpp on the tiny GGUF, through edgectl apply/plan/status) is tests/integration/test_speed_enrolment.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl_agent import benchmark
from edgectl_agent.api import CONTROL_PREFIX, ArtifactRef, DesiredDeployment
from edgectl_agent.errors import BadRequest
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.fake import FakeModel

MIB = 2**20


def test_last_level_cache_is_the_largest_cache_sysfs_lists(tmp_path: Path) -> None:
    for index, size in (("index0", "32K"), ("index2", "1024K"), ("index3", "32768K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    assert benchmark.last_level_cache_bytes(tmp_path) == 32 * MIB
    assert benchmark.last_level_cache_bytes(tmp_path / "missing") is None


def test_the_copied_buffer_outgrows_the_cache_within_the_memory_available() -> None:
    assert benchmark.buffer_bytes(32 * MIB, 16 * 2**30) == 64 * MIB
    assert benchmark.buffer_bytes(96 * MIB, 16 * 2**30) == 192 * MIB
    assert benchmark.buffer_bytes(None, 16 * 2**30) == 64 * MIB
    assert benchmark.buffer_bytes(32 * MIB, 512 * MIB) == 32 * MIB  # a small board: a sixteenth of what is free


def test_memory_bandwidth_and_compute_are_measured_for_real() -> None:
    assert benchmark.memory_bandwidth(2, 16 * MIB, repeats=2) > 1e8
    assert benchmark.matmul_flops(64, repeats=2) > 1e6


def test_device_is_measured_once_and_kept(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = benchmark.measure_device
    monkeypatch.setattr(benchmark, "measure_device", lambda cpus, ram: calls.append(cpus) or real(1, 64 * MIB))
    first = benchmark.Benchmarks(tmp_path).device(2, 2**30)
    assert first.memory_bandwidth_bytes_per_s > 0 and calls == [2]
    again = benchmark.Benchmarks(tmp_path).device(2, 2**30)  # a restarted agent reads it back
    assert again == first and calls == [2]
    (tmp_path / benchmark.FILE).write_text("{not json")  # damaged: measured again, not trusted
    assert benchmark.Benchmarks(tmp_path).device(2, 2**30).measured_at > first.measured_at and calls == [2, 2]


def test_disabled_measures_nothing(tmp_path: Path) -> None:
    assert benchmark.Benchmarks(tmp_path, enabled=False).device(2, 2**30) is None
    assert not (tmp_path / benchmark.FILE).exists()


def _desired(**kw) -> DesiredDeployment:
    return DesiredDeployment(name="m", runtime="fake", context_length=kw.pop("context_length", 512),
                             artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf", quant="F32",
                                                  size_bytes=1, model="tiny"), **kw)


def test_artifact_rates_come_from_a_streamed_completion_and_the_runtimes_token_count() -> None:
    speed = benchmark.measure_artifact(FakeModel(_desired()), digest="sha256:" + "a" * 64, runtime="fake",
                                       threads=2, context_length=512, decode_tokens=8)
    # The fake counts words as tokens: the prompt has ~0.75 words per planned token.
    assert speed.prompt_tokens == int(benchmark.PROMPT_TOKENS * 0.75)
    assert speed.decode_tokens == 8 and speed.decode_tokens_per_s > 0 and speed.prefill_tokens_per_s > 0
    assert speed.threads == 2 and 0 < speed.seconds < benchmark.ARTIFACT_BUDGET_S


class ShortContext(FakeModel):
    """Refuses prompts over ``limit`` words, like llama.cpp a prompt over its context."""

    limit = 20

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        if len(prompt.split()) > self.limit:
            raise BadRequest("llama.cpp rejected the request: Requested tokens exceed context window")
        return super().complete(prompt, params, stream=stream)


def test_a_prompt_the_context_refuses_is_halved_until_it_fits() -> None:
    speed = benchmark.measure_artifact(ShortContext(_desired()), digest="sha256:" + "a" * 64, runtime="fake",
                                       threads=None, context_length=512, decode_tokens=4)
    assert speed is not None and speed.prompt_tokens <= ShortContext.limit


def test_runs_use_different_prompts_so_no_prefix_cache_hides_the_prefill() -> None:
    assert len({benchmark.prompt_for(512, run=i) for i in range(3)}) == 3
    assert len(benchmark.prompt_for(256).split()) == int(128 * 0.75)  # at most half the context


def test_measured_once_per_artifact_and_threads_and_failures_never_fail_the_activation(tmp_path: Path) -> None:
    b = benchmark.Benchmarks(tmp_path)
    model = FakeModel(_desired())
    b.measure_artifact_once(model, digest="sha256:" + "a" * 64, runtime="fake", threads=1, context_length=512)
    first = b.artifact("sha256:" + "a" * 64, "fake", 1)
    assert first is not None

    def boom(*a, **kw):
        raise RuntimeError("the runtime fell over")

    b.measure_artifact_once(model, digest="sha256:" + "a" * 64, runtime="fake", threads=1, context_length=512,
                            measure=boom)  # already measured: not called
    b.measure_artifact_once(model, digest="sha256:" + "a" * 64, runtime="fake", threads=2, context_length=512,
                            measure=boom)  # fails: logged, nothing recorded, nothing raised
    assert b.artifact("sha256:" + "a" * 64, "fake", 2) is None
    saved = json.loads((tmp_path / benchmark.FILE).read_text())
    assert [a["threads"] for a in saved["artifacts"]] == [1]


@pytest.mark.parametrize("enabled", [True, False])
def test_facts_and_metrics_report_the_measurements(make_agent, enabled: bool) -> None:
    agent = make_agent(benchmark=enabled)
    digest = agent.upload(agent.A)
    assert agent.activate("chat", agent.A, threads=1).status_code == 200
    facts = agent.client.get(f"{CONTROL_PREFIX}/facts", headers=agent.auth).json()
    metrics = agent.client.get("/metrics", headers=agent.auth).text
    if not enabled:
        assert facts["benchmark"] is None and "measured_decode" not in metrics.split("# HELP")[-1]
        assert not (agent.root / benchmark.FILE).exists()
        return
    record = facts["benchmark"]
    assert record["memory_bandwidth_bytes_per_s"] > 0 and record["threads"] >= 1
    (measured,) = record["artifacts"]
    assert measured["digest"] == digest and measured["runtime"] == "fake" and measured["threads"] == 1
    assert "edgectl_agent_memory_bandwidth_bytes_per_second " in metrics
    assert 'edgectl_agent_measured_decode_tokens_per_second{deployment="chat"}' in metrics
    assert 'edgectl_agent_measured_prefill_tokens_per_second{deployment="chat"}' in metrics


def test_the_device_record_has_one_threads_bandwidth_and_compute() -> None:
    measured = benchmark.measure_device(2, 256 * MIB)
    assert measured.threads == 2 and measured.thread_memory_bandwidth_bytes_per_s > 1e8
    assert measured.thread_compute_flops_per_s > 1e6  # threadpoolctl: installed with nncf (the openvino extra)
    assert benchmark.thread_matmul_flops(64, repeats=2) > 1e6


def test_the_full_prompts_prefill_rate_is_the_line_through_shorter_prompts() -> None:
    # 0.5 s per request + 10 ms per token: 4 tokens take 0.54 s, 20 take 0.70 s; 100 would take 1.5 s
    assert benchmark.prefill_at(100, [(4, 0.54), (20, 0.70)]) == pytest.approx(100 / 1.5)
    assert benchmark.prefill_at(100, [(4, 0.54), (12, 0.62), (20, 0.70)]) == pytest.approx(100 / 1.5)
    assert benchmark.prefill_at(100, [(4, 0.70), (20, 0.70)]) == pytest.approx(20 / 0.70)  # no rising line
    assert benchmark.prefill_at(100, [(8, 0.4), (8, 0.5)]) == pytest.approx(8 / 0.5)  # one size: as measured


class SlowPrefill(FakeModel):
    """Answers after a constant per-request time plus a time per prompt word (the fake's token), like MLX's Linux
    CPU build: too slow to prefill the full benchmark prompt within a fifth of the budget."""

    per_request_s, per_word_s = 0.1, 0.02

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        import time

        time.sleep(self.per_request_s + self.per_word_s * len(prompt.split()))
        return super().complete(prompt, params, stream=stream)


def test_a_prompt_cut_to_the_budget_reports_the_full_prompts_rate() -> None:
    speed = benchmark.measure_artifact(SlowPrefill(_desired()), digest="sha256:" + "a" * 64, runtime="fake",
                                       threads=1, context_length=512, decode_tokens=4, budget_s=3.0)
    full = int(benchmark.PROMPT_TOKENS * 0.75)  # what a run with time for the whole prompt measures
    assert speed.prompt_tokens == full
    expected = full / (SlowPrefill.per_request_s + SlowPrefill.per_word_s * full)
    # the cut prompt's own rate is ~30% lower (its constant weighs more): the extrapolation must land near
    assert speed.prefill_tokens_per_s == pytest.approx(expected, rel=0.15)


def test_every_run_gets_a_whole_prompt_however_far_its_text_starts() -> None:
    for run in (0, 9, 12, 40):
        assert len(benchmark.prompt_for(1024, 16, run=run).split()) == 12, run


def test_runs_decode_what_the_run_time_holds_at_the_warm_ups_rate() -> None:
    """A fast device decodes the longer run's 128 tokens per run (the same positions); a slower one what
    DECODE_RUN_S holds; never fewer than DECODE_TOKENS, and DECODE_TOKENS where no warm-up ran (MLX here)."""
    assert benchmark.decode_tokens_for([0.006, 0.004, 0.005]) == benchmark.LONG_DECODE_TOKENS == 128
    assert benchmark.decode_tokens_for([0.0125] * 3, run_s=0.75) == 60
    assert benchmark.decode_tokens_for([0.1] * 3) == benchmark.DECODE_TOKENS
    assert benchmark.decode_tokens_for([]) == benchmark.DECODE_TOKENS


class TimedTokens(FakeModel):
    """Streams its words ``per_token_s`` apart after the first (a fast prefill): a device decoding at 1 /
    per_token_s tokens/s."""

    per_token_s = 0.02

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        import time

        out = super().complete(prompt, params, stream=stream)
        if not stream:
            return out

        def paced():
            for i, chunk in enumerate(out):
                if i:
                    time.sleep(self.per_token_s)
                yield chunk
        return paced()


def test_the_enrolment_sizes_its_decode_from_the_warm_up() -> None:
    model = TimedTokens(_desired())
    speed = benchmark.measure_artifact(model, digest="sha256:" + "a" * 64, runtime="fake", threads=1,
                                       context_length=512)
    want = benchmark.decode_tokens_for([TimedTokens.per_token_s])  # 37 at 20 ms per token (the fake stops at 64)
    assert benchmark.DECODE_TOKENS < want <= benchmark.LONG_DECODE_TOKENS
    assert speed.decode_tokens == pytest.approx(want, abs=3)
    assert speed.decode_tokens_per_s == pytest.approx(1 / TimedTokens.per_token_s, rel=0.3)
