"""Run the onnxruntime-genai model builder (``onnxruntime_genai.models.builder``) under transformers 4.x.

    python -m edgectl.builders.onnx_genai_compat -i SRC -o OUT -p int4 -e cpu -c CACHE

Why: onnxruntime-genai 0.18's builder imports multimodal model classes that only transformers 5 has (Qwen3.5) and
reads ``config.rope_scaling`` as a dict, where transformers 4 leaves ``None`` for default RoPE. optimum-intel (the
openvino extra) needs transformers < 4.58, so both extras share transformers 4.x. This launcher gives the missing
class names placeholder classes (only those families' builders use them; they are not buildable here) and presents a
``None`` rope_scaling as default RoPE with the config's own theta. Under transformers 5 it changes nothing.
A tiny llama built this way matches transformers' logits to 1e-6 at FP32 (tests/integration/test_onnx_genai.py).
"""

from __future__ import annotations

import runpy
import sys

# Names builders/base.py imports from transformers. Reading each first matters: reading some of them makes
# transformers replace its lazy module in sys.modules, and placeholders must go on the final one.
BUILDER_IMPORTS = (
    "AutoConfig", "AutoModelForCausalLM", "AutoModelForSpeechSeq2Seq", "AutoTokenizer", "GenerationConfig",
    "Gemma3ForConditionalGeneration", "Lfm2VlForConditionalGeneration", "Mistral3ForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration", "Qwen3_5ForConditionalGeneration",
    "Qwen3_5MoeForConditionalGeneration",
)


def patch_transformers() -> list[str]:
    """Fill what the builder needs from transformers 5; returns the names given placeholders."""
    import transformers  # noqa: F401

    missing = [n for n in BUILDER_IMPORTS if not hasattr(sys.modules["transformers"], n)]
    module = sys.modules["transformers"]
    for name in missing:
        setattr(module, name, type(name, (), {"__doc__": "placeholder: needs transformers 5"}))
    from transformers import PretrainedConfig

    if not getattr(PretrainedConfig, "_edgectl_rope_patch", False):
        original = PretrainedConfig.__getattribute__

        def getattribute(self, name: str):
            value = original(self, name)
            if name == "rope_scaling" and value is None:
                theta = getattr(self, "rope_theta", None)
                return {"rope_type": "default"} | ({"rope_theta": theta} if theta is not None else {})
            return value

        PretrainedConfig.__getattribute__ = getattribute
        PretrainedConfig._edgectl_rope_patch = True
    return missing


def main(argv: list[str]) -> None:
    patch_transformers()
    sys.argv = ["onnxruntime_genai.models.builder", *argv]
    runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
