"""bitsandbytes NF4 builder (LLMs, for the agent's ``transformers`` runtime): a Hugging Face model folder -> the
16-bit Hugging Face folder that runtime quantizes to NF4 as it loads.

NF4 is a load-time quantization: bitsandbytes quantizes the weights when transformers moves them to the device, so
the artifact is the model itself, in 16 bits (bfloat16, or float16 when the source is float16: never wider than the
loaded compute dtype needs, and half a float32 source's bytes), saved by transformers as safetensors with its
config, generation config and tokenizer. The recipe's quant (``NF4`` or ``NF4_DQ``, double quantization) travels
with the artifact and tells the runtime how to load it (edgectl_agent.runtimes.transformers_nf4); the planner
budgets memory with NF4's bits per weight (edgectl.plan.formats) and disk with the 16-bit folder.

Quality (:func:`measure_nf4`): the source in float32 against the artifact loaded as NF4 on the CPU with float32
compute, so only the 4-bit weights differ; it needs bitsandbytes with its CPU library here (the ``[bnb]`` extra).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgectl.builders.convert import read_hf_config
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.progress import StageProgress
from edgectl.spec.artifact import Quality, Recipe

NF4_DOUBLE_QUANT: dict[str, bool] = {"NF4": False, "NF4_DQ": True}  # as edgectl_agent.runtimes.transformers_nf4


def storage_dtype(source_precision: str) -> str:
    """The 16-bit dtype the artifact is saved in (pure): float16 sources stay float16, the rest become bfloat16
    (float32's range, so nothing overflows)."""
    return "float16" if source_precision.upper() in ("F16", "FP16") else "bfloat16"


def build_bnb(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
              progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Save the Hugging Face folder ``source_path`` in 16 bits into the folder ``out_path`` (created here)."""
    check_buildable(recipe)
    if recipe.quant not in NF4_DOUBLE_QUANT:
        raise BuildError(f"cannot build bnb {recipe.quant}", hint=f"bnb quant types: {', '.join(NF4_DOUBLE_QUANT)}")
    source, out = Path(source_path).resolve(), Path(out_path)
    read_hf_config(source, builder="bnb", require=("model_type",))
    torch = require_module("torch", "bnb")
    transformers = require_module("transformers", "bnb")
    if progress:
        progress("save 16-bit folder (bnb)", 0, None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(source), dtype=getattr(torch, storage_dtype(recipe.source_precision)), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(source), local_files_only=True)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BuildError(f"transformers {transformers.__version__} could not load and save {source}: "
                         f"{type(e).__name__}: {e}",
                         hint="check the folder loads with transformers (AutoModelForCausalLM), and free disk space "
                              "in the artifact store (EDGECTL_CACHE_DIR)") from e
    finally:
        torch.set_num_threads(before)
    if not (out / "config.json").is_file() or not any(out.glob("*.safetensors")):
        raise BuildError(f"transformers reported success but {out} has no config.json or safetensors weights",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")
    if progress:
        progress("save 16-bit folder (bnb)", 1, 1)


def _nf4_logits(folder: Path, tokens: list[int], *, double_quant: bool) -> Any:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32,
                                bnb_4bit_use_double_quant=double_quant)
    model = AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=config, dtype=torch.float32,
                                                 device_map={"": "cpu"}, local_files_only=True)
    with torch.no_grad():
        return np.asarray(model(torch.tensor([tokens])).logits[0].float().numpy())


def measure_nf4(source_folder: Path, artifact_folder: Path, quant: str, *, threads: int = 1) -> Quality:
    """The NF4 artifact (loaded by bitsandbytes on the CPU, float32 compute) against its float32 source, on the fixed
    text of edgectl.builders.quality. Raises on any failure (the caller decides whether that matters)."""
    import bitsandbytes
    import numpy as np
    import torch
    import transformers

    from edgectl.builders.quality import _hf_logits, compare

    source_logits, tokens = _hf_logits(Path(source_folder), threads=threads)
    if len(tokens) < 2:
        raise ValueError(f"the quality text tokenized to {len(tokens)} token(s) with {source_folder}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        artifact_logits = _nf4_logits(Path(artifact_folder), tokens, double_quant=NF4_DOUBLE_QUANT[quant])
    finally:
        torch.set_num_threads(before)
    if artifact_logits.shape != source_logits.shape:
        raise ValueError(f"the artifact's logits {artifact_logits.shape} differ in shape from the source's "
                         f"{source_logits.shape}")
    tool = f"bitsandbytes {bitsandbytes.__version__} (CPU) vs transformers {transformers.__version__}"
    return compare(source_logits, artifact_logits, np.array(tokens), tool=tool)
