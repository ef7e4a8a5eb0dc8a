"""Hugging Face folders quantized to NF4 as they load: transformers + bitsandbytes (the ``[bnb]`` extra), imported
only when a model is loaded.

An artifact (format ``bnb``, edgectl.builders.bnb) is a 16-bit Hugging Face folder: safetensors, config.json, the
tokenizer files. Loading it passes ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")``: every
linear layer but the output head becomes a bitsandbytes ``Linear4bit`` holding 4-bit NormalFloat codes with one
absmax per 64 weights (quant ``NF4``), or with those absmax values themselves quantized to 8 bits in blocks of 256
(``NF4_DQ``, bitsandbytes' "double quantization"); embeddings, norms and the output head stay at the compute dtype.

Where it runs (``runtime_options.device``, which the planner sets): ``cuda`` (the default when torch sees a GPU) or
``cpu``, which works only where the installed bitsandbytes ships its CPU library (bitsandbytes 0.49+ wheels do:
``libbitsandbytes_cpu``; the agent reports it in ``Facts.bitsandbytes_backends``). ``runtime_options.compute_dtype``:
float16 on CUDA, bfloat16 on the CPU unless set.

Generation is a plain token loop over the model with its KV cache (no ``generate`` thread): each step's logits are
sampled here (:func:`sample_token`), decoded incrementally, and TextGenModel applies chat templates, stop strings and
the OpenAI response shapes.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes import catalog
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel, Runtime, RuntimeCapabilities, import_library
from edgectl_agent.runtimes.textgen import TextGenModel

INSTALL_HINT = catalog.install_hint("transformers")
# recipe quant -> bitsandbytes' double quantization (the absmax of every 64 weights quantized again, to 8 bits)
NF4_QUANTS: dict[str, bool] = {"NF4": False, "NF4_DQ": True}
COMPUTE_DTYPES = ("bfloat16", "float16", "float32")
DEVICES = ("cpu", "cuda")
OPTIONS = ("device", "compute_dtype")
# OpenAI's defaults when a request leaves them out (top_p 1.0 = no nucleus cut).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0


def load_options(desired: DesiredDeployment, *, cuda_available: bool) -> tuple[str, str]:
    """(torch device, compute dtype name) from the deployment's runtime_options (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - set(OPTIONS))
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown transformers runtime_options {unknown}",
                             hint=f"use only: {', '.join(OPTIONS)}")
    device = str(desired.runtime_options.get("device") or ("cuda" if cuda_available else "cpu"))
    if device.split(":")[0] not in DEVICES:
        raise RuntimeFailure(f"deployment '{desired.name}': transformers runtime_options.device {device!r} is not "
                             "cpu, cuda or cuda:N", hint="e.g. runtime_options: {device: cuda}")
    if device.startswith("cuda") and not cuda_available:
        raise RuntimeFailure(f"deployment '{desired.name}' asks for device {device}, but torch on this device sees "
                             "no CUDA GPU", status=422,
                             hint="install a CUDA build of torch and the NVIDIA driver, or deploy with "
                                  "runtime_options: {device: cpu} where bitsandbytes supports the CPU")
    dtype = desired.runtime_options.get("compute_dtype") or ("float16" if device.startswith("cuda") else "bfloat16")
    if dtype not in COMPUTE_DTYPES:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.compute_dtype {dtype!r} is not one of "
                             f"{', '.join(COMPUTE_DTYPES)}", hint="e.g. runtime_options: {compute_dtype: bfloat16}")
    return device, dtype


def double_quant(desired: DesiredDeployment) -> bool:
    """Whether the artifact's recipe asks for bitsandbytes' double quantization (NF4_DQ)."""
    try:
        return NF4_QUANTS[desired.artifact.quant]
    except KeyError:
        raise RuntimeFailure(f"artifact {desired.artifact.digest} of deployment '{desired.name}' has quant "
                             f"{desired.artifact.quant!r}; the transformers runtime loads {', '.join(NF4_QUANTS)}",
                             hint="build the model with format: bnb and quant NF4 or NF4_DQ") from None


def eos_token_ids(folder: Path, tokenizer_eos: int | None) -> set[int]:
    """End-of-sequence ids: the tokenizer's, config.json's and generation_config.json's (chat models such as Llama 3
    end turns with a token named only in the latter)."""
    ids: set[int] = {tokenizer_eos} if isinstance(tokenizer_eos, int) else set()
    for name in ("config.json", "generation_config.json"):
        try:
            raw = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        value = raw.get("eos_token_id") if isinstance(raw, dict) else None
        for v in [value] if isinstance(value, int) else value if isinstance(value, list) else []:
            if isinstance(v, int) and not isinstance(v, bool):
                ids.add(v)
    return ids


def sample_token(logits: Any, params: GenerationParams, generator: Any) -> int:
    """The next token from one position's logits: greedy at temperature 0, else temperature + top-p sampling."""
    import torch

    temperature = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    top_p = DEFAULT_TOP_P if params.top_p is None else params.top_p
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def loaded_weight_bytes(model: Any) -> int:
    """Bytes the loaded model's weights hold: its parameters and buffers (transformers' ``get_memory_footprint``,
    which sees the 4-bit codes) plus what that leaves out, each Linear4bit's quantization state (absmax per block,
    the nested absmax and code books of double quantization). What the planner's NF4 layout is checked against."""
    total = int(model.get_memory_footprint())
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        tensors = [state.absmax, state.code]
        if getattr(state, "state2", None) is not None:
            tensors += [state.state2.absmax, state.state2.code]
        total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
    return total


def release_freed_memory() -> None:
    """Hand memory freed after loading back to the system (glibc keeps it in its heap otherwise: loading SmolLM2
    left ~450 MiB of freed 16-bit copies resident)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def bitsandbytes_has_cpu() -> bool:
    from edgectl_agent.facts import bitsandbytes_backends

    return "cpu" in (bitsandbytes_backends() or [])


class TransformersNf4Runtime(Runtime):
    name = "transformers"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        path = Path(path)
        use_double_quant = double_quant(desired)
        # transformers fetches from the Hugging Face hub when given a folder without config.json: never let it.
        if not (path / "config.json").is_file():
            raise RuntimeFailure(f"artifact {desired.artifact.digest} for deployment '{desired.name}' is not a "
                                 f"Hugging Face folder ({path} has no config.json)",
                                 hint="build the model with format: bnb (edgectl build) and upload it again")
        torch = import_library(self.name, "torch")
        transformers = import_library(self.name, "transformers")
        bnb = import_library(self.name, "bitsandbytes")
        device, dtype_name = load_options(desired, cuda_available=torch.cuda.is_available())
        if device == "cpu" and not bitsandbytes_has_cpu():
            raise RuntimeFailure(f"bitsandbytes {bnb.__version__} on this device has no CPU library, so deployment "
                                 f"'{desired.name}' cannot load NF4 on the CPU", status=422,
                                 hint="install bitsandbytes>=0.49 (its wheels ship libbitsandbytes_cpu), or deploy "
                                      "to a device with a CUDA GPU")
        dtype = getattr(torch, dtype_name)
        config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_compute_dtype=dtype,
                                                 bnb_4bit_use_double_quant=use_double_quant)
        if desired.threads:
            torch.set_num_threads(desired.threads)
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                str(path), quantization_config=config, dtype=dtype, device_map={"": device},
                local_files_only=True)
        except (ValueError, KeyError, OSError, RuntimeError, ImportError) as e:
            raise RuntimeFailure(f"transformers {transformers.__version__} with bitsandbytes {bnb.__version__} could "
                                 f"not load {desired.artifact.digest} ({desired.artifact.model} "
                                 f"{desired.artifact.quant}) on {device} for deployment '{desired.name}': "
                                 f"{type(e).__name__}: {e}",
                                 hint=f"check the device has the memory and the libraries ({INSTALL_HINT}); "
                                      "see the agent log") from e
        model.eval()
        release_freed_memory()  # the 16-bit copies bitsandbytes quantized from
        return TransformersNf4Model(desired.name, path, model, tokenizer, device=device,
                                    context_length=desired.context_length)


class TransformersNf4Model(TextGenModel):
    """One NF4-quantized transformers model and its tokenizer; generations run one at a time (TextGenModel's
    lock)."""

    def __init__(self, name: str, folder: Path, model: Any, tokenizer: Any, *, device: str,
                 context_length: int) -> None:
        super().__init__(name, folder, context_length=context_length)
        self._model, self._tokenizer, self.device = model, tokenizer, device
        self._eos = eos_token_ids(folder, tokenizer.eos_token_id)
        self.weight_bytes = loaded_weight_bytes(model)  # what the planner's NF4 layout is checked against

    def _pieces(self, prompt: str, params: GenerationParams, max_tokens: int) -> Iterator[str]:
        import torch

        tokens = self._encode(prompt)
        max_tokens = self._fit_to_context(len(tokens), max_tokens)
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        past, step = None, torch.tensor([tokens], device=self.device)
        generated: list[int] = []
        said = ""
        try:
            with torch.inference_mode():
                for _ in range(max_tokens):
                    out = self._model(input_ids=step, past_key_values=past, use_cache=True, logits_to_keep=1)
                    past = out.past_key_values
                    token = sample_token(out.logits[0, -1], params, generator)
                    if token in self._eos:
                        return
                    generated.append(token)
                    text = self._tokenizer.decode(generated, skip_special_tokens=True)
                    if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                        yield ""
                        continue
                    yield text[len(said):]
                    said = text
                    step = torch.tensor([[token]], device=self.device)
        except RuntimeError as e:
            raise RuntimeFailure(f"transformers failed while generating for deployment '{self.name}': {e}",
                                 hint="see the agent log; on a GPU, check its memory (nvidia-smi)") from e

    def _free(self) -> None:
        self._model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass
