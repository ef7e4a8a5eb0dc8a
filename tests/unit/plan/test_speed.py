"""The speed estimate (edgectl/plan/speed.py): the calibration point it was fitted on, and how it moves with the
bytes read, the threads, the prompt and GPU offload. bench/speed.py checks it against llama.cpp on the machine."""

from __future__ import annotations

import pytest

from edgectl.plan import speed
from edgectl.plan.speed import Hardware, bytes_per_token, estimate_speed
from edgectl.spec.model import Architecture

MIB = 2**20
SMOLLM2 = Architecture(family="llama", parameters=134_515_008, layers=30, hidden_size=576, attention_heads=9,
                       kv_heads=3, head_dim=64, vocab_size=49152, max_context=8192, tied_embeddings=True)
LLAMA_1B = Architecture(family="llama", parameters=1_235_814_400, layers=16, hidden_size=2048, attention_heads=32,
                        kv_heads=8, head_dim=64, vocab_size=128256, max_context=131072, tied_embeddings=True)
# This repository's machine as bench/speed.py measured it (2 threads): numpy copy 63.8 GB/s, sgemm 239 GFLOPS.
HERE = Hardware(bandwidth=63.8e9, compute=239e9, cores=2)


def test_the_calibration_point_is_reproduced() -> None:
    """SmolLM2 Q4_1 (93.8 MiB file), 250-token prompt: llama.cpp measured 124 tokens/s decode, 452 prefill."""
    s = estimate_speed(SMOLLM2, int(93.8 * MIB), HERE, threads=2, prompt_tokens=250)
    assert s.decode_tokens_per_s == pytest.approx(124, rel=0.1)
    assert s.prefill_tokens_per_s == pytest.approx(452, rel=0.1)
    assert s.source == "estimated" and s.ttft_ms == pytest.approx(1000 * 250 / s.prefill_tokens_per_s)


def test_decode_is_bandwidth_bound_for_a_larger_model_given_the_cores() -> None:
    # With compute to spare (16 cores) decode goes with the bytes: ratio 1.625, less the fixed per-token cost.
    wide = Hardware(bandwidth=63.8e9, compute=8 * 239e9, cores=16)
    q4 = estimate_speed(LLAMA_1B, 800 * MIB, wide, threads=16).decode_tokens_per_s
    q8 = estimate_speed(LLAMA_1B, 1300 * MIB, wide, threads=16).decode_tokens_per_s
    assert 1.4 < q4 / q8 < 1.65
    # On 2 threads the multiply-adds take about as long as the reads (speed.py: the compute term, summed).
    q4 = estimate_speed(LLAMA_1B, 800 * MIB, HERE, threads=2).decode_tokens_per_s
    q8 = estimate_speed(LLAMA_1B, 1300 * MIB, HERE, threads=2).decode_tokens_per_s
    assert 1.1 < q4 / q8 < 1.4


def test_decode_time_is_the_sum_of_its_terms_at_one_thread() -> None:
    """The one-thread calibration point (speed.py, (b)): Q4_1 97.0 tokens/s measured, within 10%; Q8_0's prefill
    2.0x Q4_1's (QUANT_COMPUTE_FACTORS). Q8_0's decode of that run (86.8) is not pinned any more: the quiet run of
    02:38 UTC below measured Q8_0 decoding as fast as Q4_1, which no model with (b)'s figures also meets."""
    one = Hardware(bandwidth=26.8e9, compute=95.8e9, cores=1)
    q4 = estimate_speed(SMOLLM2, 98_362_432, one, threads=1, prompt_tokens=103)
    q8 = estimate_speed(SMOLLM2, 144_811_072, one, threads=1, prompt_tokens=103, quant="Q8_0")
    assert q4.decode_tokens_per_s == pytest.approx(97.0, rel=0.1)
    assert q4.prefill_tokens_per_s == pytest.approx(176, rel=0.1)
    assert q8.prefill_tokens_per_s == pytest.approx(386, rel=0.15)  # QUANT_COMPUTE_FACTORS: 2.0 of Q4_1's


def test_q8_0_decode_counts_its_faster_kernels_and_its_extra_bytes() -> None:
    """The quiet bench/speed.py run (2026-12-07 02:38 UTC, docs/benchmarks.md): 27.6 GB/s one-thread copy, 119.2
    GFLOPS per thread; at 1 thread Q4_1 (94 MiB) decoded 130.4 tokens/s, Q8_0 (138 MiB) 137.4. Both estimates within
    the bench's 25%; Q8_0's compute term is half Q4_1's (its kernels, as at prefill), its bandwidth term 1.45x."""
    here = Hardware(bandwidth=35.1e9, compute=2 * 119.2e9, cores=2, thread_bandwidth=27.6e9)
    q4 = estimate_speed(SMOLLM2, 94 * MIB, here, threads=1, prompt_tokens=119)
    q8 = estimate_speed(SMOLLM2, 138 * MIB, here, threads=1, prompt_tokens=119, quant="Q8_0")
    assert q4.decode_tokens_per_s == pytest.approx(130.4, rel=0.25)
    assert q8.decode_tokens_per_s == pytest.approx(137.4, rel=0.25)
    # without the kernel factor on decode (the old model) Q8_0 was estimated at 0.65x: a miss
    assert q8.decode_tokens_per_s / q4.decode_tokens_per_s > 0.9
    # with compute to spare, the extra bytes win: on 16 cores Q8_0 of a 1B model decodes slower than its Q4_1
    wide = Hardware(bandwidth=63.8e9, compute=16 * 119.2e9, cores=16)
    assert (estimate_speed(LLAMA_1B, 1300 * MIB, wide, threads=16, quant="Q8_0").decode_tokens_per_s
            < estimate_speed(LLAMA_1B, 800 * MIB, wide, threads=16, quant="Q4_1").decode_tokens_per_s)


def test_mlx_figure_follows_the_devices_os() -> None:
    mac = Hardware(bandwidth=70e9, compute=420e9, cores=8, basis="mac", os="darwin")
    linux = Hardware(bandwidth=70e9, compute=420e9, cores=8, basis="box", os="linux")
    on_mac = estimate_speed(SMOLLM2, 80 * MIB, mac, threads=4, runtime="mlx")
    on_linux = estimate_speed(SMOLLM2, 80 * MIB, linux, threads=4, runtime="mlx")
    assert on_linux.decode_tokens_per_s < 0.1 * on_mac.decode_tokens_per_s  # its Linux CPU build: ~7.5% (RUNTIME_FACTORS)
    assert "Apple silicon (Metal)" in on_mac.basis and "Linux CPU build" in on_linux.basis
    assert "MLX" not in estimate_speed(SMOLLM2, 80 * MIB, linux, threads=4).basis  # llama.cpp: no such note


def test_kv_cache_of_the_prompt_is_read_per_token_and_untied_embeddings_are_not() -> None:
    short = bytes_per_token(LLAMA_1B, 10**9, 0)
    assert bytes_per_token(LLAMA_1B, 10**9, 1000) - short == 2 * 16 * 8 * 64 * 2 * 1000
    untied = LLAMA_1B.model_copy(update={"tied_embeddings": False})
    assert bytes_per_token(untied, 10**9, 0) < short


def test_threads_scale_prefill_and_decode_compute_not_bandwidth() -> None:
    one = estimate_speed(LLAMA_1B, 800 * MIB, HERE, threads=1)
    two = estimate_speed(LLAMA_1B, 800 * MIB, HERE, threads=2)
    assert two.prefill_tokens_per_s == pytest.approx(2 * one.prefill_tokens_per_s)
    # decode: the compute term halves, the bandwidth term does not (and threads meet at a barrier per layer)
    assert one.decode_tokens_per_s < two.decode_tokens_per_s < 1.5 * one.decode_tokens_per_s
    assert estimate_speed(LLAMA_1B, 800 * MIB, HERE, threads=64).prefill_tokens_per_s == two.prefill_tokens_per_s


def test_offloaded_layers_go_at_the_gpu_figures() -> None:
    box = Hardware(bandwidth=58e9, compute=1600e9, cores=16, gpu_bandwidth=700e9, gpu_compute=57e12)
    cpu = estimate_speed(LLAMA_1B, 800 * MIB, box, threads=16)
    half = estimate_speed(LLAMA_1B, 800 * MIB, box, threads=16, gpu_layers=8)
    full = estimate_speed(LLAMA_1B, 800 * MIB, box, threads=16, gpu_layers=-1)
    assert cpu.decode_tokens_per_s < half.decode_tokens_per_s < full.decode_tokens_per_s
    assert full.prefill_tokens_per_s > 10 * cpu.prefill_tokens_per_s


def test_profile_figures_are_peaks_and_missing_ones_are_named() -> None:
    from edgectl.load import builtin_profiles_dir, load_text

    path = builtin_profiles_dir() / "raspberry-pi-5.yaml"
    profile = load_text(path.read_text(), str(path))[0].spec
    hw = speed.hardware(profile, "raspberry-pi-5")
    assert hw.bandwidth == pytest.approx(profile.memory_bandwidth_gbps * 1e9 * speed.PEAK_TO_SUSTAINED)
    assert "raspberry-pi-5: 17.1 GB/s" in hw.basis
    bare = profile.model_copy(update={"compute_gflops": None})
    assert speed.hardware(bare, "x") is None
    assert "no compute_gflops" in speed.missing_figures(bare)


def test_every_builtin_profile_has_speed_figures() -> None:
    from edgectl.load import builtin_profiles_dir, load_text

    for path in builtin_profiles_dir().glob("*.yaml"):
        profile = load_text(path.read_text(), str(path))[0].spec
        assert speed.hardware(profile, path.stem) is not None, path.name


def test_one_thread_draws_at_most_what_one_threads_copy_streams() -> None:
    """A device that measured one thread's copy (26.8 GB/s here, against 63.8 with both CPUs): a one-thread decode
    is estimated at that bandwidth, a two-thread one at most at twice it (never above the device's)."""
    limited = Hardware(bandwidth=63.8e9, compute=2 * 95.8e9, cores=2, thread_bandwidth=26.8e9)
    unlimited = Hardware(bandwidth=63.8e9, compute=2 * 95.8e9, cores=2)
    assert limited.cpu_bandwidth(1) == 26.8e9 and limited.cpu_bandwidth(2) == 53.6e9
    assert limited.cpu_bandwidth(8) == unlimited.cpu_bandwidth(1) == 63.8e9
    one = estimate_speed(SMOLLM2, 98_362_432, limited, threads=1, prompt_tokens=103)
    assert one.decode_tokens_per_s == pytest.approx(97.0, rel=0.1)  # calibration point (b) of speed.py
    assert estimate_speed(SMOLLM2, 98_362_432, unlimited, threads=1).decode_tokens_per_s > one.decode_tokens_per_s
