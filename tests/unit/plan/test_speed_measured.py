"""The planner's measured path (edgectl/plan/speed.py): a device's enrolment benchmark replaces the profile's
figures, an artifact's measured rates are used as they are, and they calibrate the same runtime's other
candidates. The golden case tests/unit/plan/cases/speed-measured.yaml runs it through plan(); the real counterpart
(an agent measuring itself) is tests/integration/test_speed_enrolment.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from edgectl.plan import speed
from edgectl_agent.api import ArtifactSpeed, DeviceBenchmark

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)
DIGEST = "sha256:" + "1" * 64


def _profile(name: str):
    from edgectl.load import builtin_profiles_dir, load_text

    path = builtin_profiles_dir() / f"{name}.yaml"
    return load_text(path.read_text(), str(path))[0].spec


def _bench(bw: float, flops: float | None) -> DeviceBenchmark:
    return DeviceBenchmark(memory_bandwidth_bytes_per_s=bw, compute_flops_per_s=flops, threads=4, seconds=0.5,
                           measured_at=EPOCH)


def test_measured_figures_replace_the_profiles_and_a_gpu_keeps_its_own() -> None:
    hw = speed.hardware(_profile("raspberry-pi-5"), "pi5", _bench(9e9, 20e9))
    assert (hw.bandwidth, hw.compute) == (9e9, 20e9)  # sustained already: no peak-to-sustained factor
    assert hw.basis == "pi5: measured at enrolment 9.0 GB/s, 20 GFLOPS"
    only_bw = speed.hardware(_profile("raspberry-pi-5"), "pi5", _bench(9e9, None))
    assert only_bw.compute == pytest.approx(_profile("raspberry-pi-5").compute_gflops * 1e9 * speed.PEAK_TO_SUSTAINED)
    assert "GFLOPS (profile)" in only_bw.basis
    box = speed.hardware(_profile("nvidia-gpu-box"), "box", _bench(50e9, 500e9))
    assert box.bandwidth == 50e9 and box.gpu_bandwidth > box.bandwidth and "RTX" in box.basis


def test_a_profile_without_figures_is_estimated_once_the_device_measured_itself() -> None:
    bare = _profile("raspberry-pi-5").model_copy(update={"memory_bandwidth_gbps": None, "compute_gflops": None})
    assert speed.hardware(bare, "x") is None
    assert speed.hardware(bare, "x", _bench(9e9, 20e9)).bandwidth == 9e9
    assert speed.hardware(bare, "x", _bench(9e9, None)) is None  # no compute anywhere: nothing to estimate prefill


def test_measured_rates_are_used_as_they_are_and_calibrate_the_runtimes_others() -> None:
    est = speed.Speed(decode_tokens_per_s=50, prefill_tokens_per_s=200, prompt_tokens=512)
    m = ArtifactSpeed(digest=DIGEST, runtime="llamacpp", threads=1, prompt_tokens=120, prefill_tokens_per_s=300,
                      decode_tokens=32, decode_tokens_per_s=25, seconds=1.0, measured_at=EPOCH)
    got = speed.measured_speed(m, 512, est)
    assert (got.decode_tokens_per_s, got.prefill_tokens_per_s, got.source) == (25, 300, "measured")
    assert got.label() == "25 tokens/s decode, 300 tokens/s prefill (measured)" and got.estimate is est
    assert got.to_dict()["estimate"]["source"] == "estimated" and "1 thread)" in got.basis
    calibration = speed.device_calibration(m, est, "gguf Q4_1 here")
    other = calibration.apply(speed.Speed(decode_tokens_per_s=40, prefill_tokens_per_s=100, prompt_tokens=512))
    assert (other.decode_tokens_per_s, other.prefill_tokens_per_s) == (20, 150) and other.source == "estimated"
    assert "x0.50 decode, x1.50 prefill as measured on gguf Q4_1 here" in other.basis


def test_prefill_threads_are_what_the_runtime_uses() -> None:
    assert speed.prefill_threads("llamacpp", 1, 8, {}) == 1  # the agent sets n_threads_batch to the threads
    assert speed.prefill_threads("llamacpp", 1, 8, {"n_threads_batch": 2}) == 2
    # OpenVINO GenAI (INFERENCE_NUM_THREADS) and ONNX GenAI (intra_op_num_threads) get the deployment's threads
    assert speed.prefill_threads("openvino-genai", 1, 8, {}) == 1
    assert speed.prefill_threads("onnxruntime-genai", 3, 8, {}) == speed.decode_threads("onnxruntime-genai", 3, 8) == 3
    # MLX has no thread setting: its Linux CPU build runs on one thread, Metal is counted with every core
    assert speed.prefill_threads("mlx", 4, 8, {}, "linux") == speed.decode_threads("mlx", 4, 8) == 1
    assert speed.decode_threads("mlx", 4, 8, "darwin") == 8
