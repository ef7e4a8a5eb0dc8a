"""The transformers (bitsandbytes NF4) runtime's pure parts: runtime_options, the recipe's double quantization, end
ids, sampling, and the bitsandbytes backends fact. Loading and serving for real: tests/integration/test_bnb_nf4.py."""

from __future__ import annotations

import json

import pytest

from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.facts import parse_bitsandbytes_backends
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.transformers_nf4 import double_quant, eos_token_ids, load_options, sample_token


def desired(quant: str = "NF4", **options) -> DesiredDeployment:
    return DesiredDeployment(name="m", runtime="transformers", runtime_options=options, artifact=ArtifactRef(
        digest="sha256:" + "0" * 64, format="bnb", quant=quant, size_bytes=1, model="m", layout="tree"))


def test_device_and_compute_dtype_default_to_the_gpu_when_torch_sees_one() -> None:
    assert load_options(desired(), cuda_available=True) == ("cuda", "float16")
    assert load_options(desired(), cuda_available=False) == ("cpu", "bfloat16")
    assert load_options(desired(device="cpu", compute_dtype="float32"), cuda_available=True) == ("cpu", "float32")
    assert load_options(desired(device="cuda:1"), cuda_available=True) == ("cuda:1", "float16")


@pytest.mark.parametrize("options, said", [
    ({"device": "tpu"}, "runtime_options.device 'tpu'"),
    ({"compute_dtype": "int8"}, "compute_dtype 'int8'"),
    ({"n_gpu_layers": 3}, "unknown transformers runtime_options ['n_gpu_layers']"),
])
def test_bad_options_are_refused_naming_them(options, said) -> None:
    with pytest.raises(RuntimeFailure) as err:
        load_options(desired(**options), cuda_available=False)
    assert said in str(err.value) and err.value.hint


def test_cuda_without_a_gpu_is_a_422_saying_what_to_install() -> None:
    with pytest.raises(RuntimeFailure) as err:
        load_options(desired(device="cuda"), cuda_available=False)
    assert err.value.status == 422 and "no CUDA GPU" in str(err.value) and "device: cpu" in err.value.hint


def test_the_recipe_quant_says_double_quantization() -> None:
    assert double_quant(desired("NF4")) is False and double_quant(desired("NF4_DQ")) is True
    with pytest.raises(RuntimeFailure, match="loads NF4, NF4_DQ"):
        double_quant(desired("INT4"))


def test_end_ids_come_from_the_tokenizer_and_both_configs(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 128009, True]}))
    assert eos_token_ids(tmp_path, 0) == {0, 2, 128009}
    assert eos_token_ids(tmp_path / "missing", None) == set()


def test_sampling_is_greedy_at_temperature_zero_and_seeded_otherwise() -> None:
    import torch

    logits = torch.tensor([0.0, 3.0, 1.0, 2.9])
    assert sample_token(logits, GenerationParams(temperature=0.0), torch.Generator()) == 1
    # top_p small enough keeps only the most likely token
    assert {sample_token(logits, GenerationParams(temperature=1.0, top_p=0.05), torch.Generator().manual_seed(s))
            for s in range(20)} == {1}
    draws = [sample_token(logits, GenerationParams(temperature=5.0), torch.Generator().manual_seed(7))
             for _ in range(2)]
    assert draws[0] == draws[1]  # the same seed draws the same token
    assert len({sample_token(logits, GenerationParams(temperature=5.0), torch.Generator().manual_seed(s))
                for s in range(40)}) > 1


def test_bitsandbytes_backends_are_read_from_its_library_files() -> None:
    files = ["__init__.py", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda118.so", "libbitsandbytes_cuda128.so",
             "libbitsandbytes_rocm64.so", "libbitsandbytes_xpu2025.so", "libbitsandbytes_mps.dylib", "functional.py"]
    assert parse_bitsandbytes_backends(files) == ["cpu", "cuda", "mps", "rocm", "xpu"]
    assert parse_bitsandbytes_backends(["libbitsandbytes_cuda121.so"]) == ["cuda"]  # 0.44 and older: no CPU library
    assert parse_bitsandbytes_backends([]) == []
