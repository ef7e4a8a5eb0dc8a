"""The Intel NPU's OpenVINO recipe (INT4_SYM_CW) is a recipe of its own: its own cache key and store entry, looked
up before planning so an NPU plan sees it built. The build and the IR check: tests/integration/test_openvino_llm.py;
the choice: golden case intel-npu."""

from __future__ import annotations

from edgectl.builders.openvino import CHANNEL_WISE, LLM_WEIGHT_MODES
from edgectl.load import load_paths
from edgectl.plan.formats import quality_rank, weights_bytes
from edgectl.plan.select import NPU_INT4, candidate_recipes
from edgectl.spec import Recipe
from tests.unit.builders.test_missing_offline_source import FLEET


def test_the_npu_recipe_is_nncf_int4_sym_channel_wise() -> None:
    assert LLM_WEIGHT_MODES[NPU_INT4] == "INT4_SYM" and CHANNEL_WISE == -1
    assert LLM_WEIGHT_MODES["INT4"] == "INT4_ASYM"  # CPU and GPU keep the grouped asymmetric recipe


def test_its_cache_key_differs_from_grouped_int4() -> None:
    grouped = Recipe(model="m", format="openvino", quant="INT4", source_precision="BF16")
    npu = grouped.model_copy(update={"quant": NPU_INT4})
    assert grouped.cache_key("sha256:" + "0" * 64, "t") != npu.cache_key("sha256:" + "0" * 64, "t")


def test_the_store_is_asked_for_it_before_planning() -> None:
    spec = load_paths([FLEET])
    dep, model = spec.deployments["smollm2"], spec.models["smollm2-135m-instruct"]
    quants = [r.quant for r in candidate_recipes(dep, model, None) if r.format == "openvino"]
    assert NPU_INT4 in quants and "INT4" in quants and len(quants) == len(set(quants))


def test_it_is_about_4_bits_a_weight_and_ranked_below_grouped_int4() -> None:
    arch = load_paths([FLEET]).models["smollm2-135m-instruct"].spec.architecture
    assert weights_bytes(arch, "openvino", NPU_INT4) < weights_bytes(arch, "openvino", "INT4")
    assert quality_rank("openvino", NPU_INT4) < quality_rank("openvino", "INT4")
