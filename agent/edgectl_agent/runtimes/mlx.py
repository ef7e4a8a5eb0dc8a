"""MLX LLMs through mlx-lm (the ``[mlx]`` extra), imported only when a model is loaded.

An artifact is an MLX folder (edgectl.builders.mlx): model.safetensors, config.json (with ``quantization`` for INT8 /
INT4), the tokenizer files. mlx runs on Metal on Apple silicon and on the CPU on Linux. Generation goes through
``mlx_lm.stream_generate``; chat templates, stop strings and response shapes are TextGenModel's.

mlx streams belong to the thread that made them (an array built on one thread cannot be evaluated on another:
"There is no Stream(cpu, 0) in current thread"), while the agent answers requests on a pool of threads. So every mlx
call - import, load, each generation step, free - runs on one thread per process (``MlxThread``).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes import catalog
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel, Runtime, RuntimeCapabilities, not_installed
from edgectl_agent.runtimes.textgen import TextGenModel

log = logging.getLogger(__name__)

INSTALL_HINT = catalog.install_hint("mlx")
# OpenAI's defaults when a request leaves them out (top_p 1.0 = no nucleus cut).
DEFAULT_TEMPERATURE = 1.0
DEFAULT_TOP_P = 1.0
# runtime_options a deployment may pass to mlx_lm.stream_generate (everything else is refused, by name):
# kv_bits / kv_group_size quantize the KV cache; prefill_step_size bounds the prompt batch (memory vs speed).
MLX_OPTIONS: dict[str, type] = {"kv_bits": int, "kv_group_size": int, "prefill_step_size": int}
# runtime_options.dtype: the float type the model computes in (quantized weights stay packed; their scales, biases
# and the norms are cast). Default: the artifact's own (float16) on Metal, float32 on the CPU, where mlx has no fast
# float16 kernels (a quantized matmul with float16 scales measured ~30x slower than with float32 on x86).
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")


def generate_kwargs(desired: DesiredDeployment) -> dict[str, Any]:
    """The extra keyword arguments for ``mlx_lm.stream_generate`` from runtime_options (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - set(MLX_OPTIONS) - {"dtype"})
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown mlx runtime_options {unknown}",
                             hint=f"use only: {', '.join(sorted([*MLX_OPTIONS, 'dtype']))}")
    kw: dict[str, Any] = {}
    for key, value in desired.runtime_options.items():
        if key == "dtype":
            continue
        if not isinstance(value, MLX_OPTIONS[key]) or isinstance(value, bool) or value <= 0:
            raise RuntimeFailure(f"deployment '{desired.name}': mlx runtime_options.{key} must be a positive "
                                 f"integer, got {value!r}", hint=f"e.g. runtime_options: {{{key}: 8}}")
        kw[key] = value
    return kw


def compute_dtype(desired: DesiredDeployment, *, on_cpu: bool) -> str | None:
    """The dtype to cast the loaded model to, or None to keep the artifact's (pure; unit-tested)."""
    chosen = desired.runtime_options.get("dtype")
    if chosen is None:
        return "float32" if on_cpu else None
    if chosen not in COMPUTE_DTYPES:
        raise RuntimeFailure(f"deployment '{desired.name}': mlx runtime_options.dtype {chosen!r} is not one of "
                             f"{', '.join(COMPUTE_DTYPES)}", hint="e.g. runtime_options: {dtype: float16}")
    return chosen


def sampler_settings(params: GenerationParams) -> dict[str, float]:
    """``make_sampler`` arguments for a request: temperature 0 = greedy (pure; unit-tested)."""
    temp = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
    top_p = DEFAULT_TOP_P if params.top_p is None else params.top_p
    return {"temp": float(temp), "top_p": float(top_p)}


def generation_eos_ids(folder: Path) -> list[int]:
    """End-of-sequence ids generation_config.json lists (mlx_lm reads only config.json's; chat models such as
    Llama 3 end turns with another token named only here)."""
    try:
        raw = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    ids = raw.get("eos_token_id") if isinstance(raw, dict) else None
    ids = [ids] if isinstance(ids, int) else ids if isinstance(ids, list) else []
    return [i for i in ids if isinstance(i, int) and not isinstance(i, bool)]


def token_pieces(responses: Iterable[Any]) -> Iterator[str]:
    """One text piece per generated token from ``stream_generate``'s responses.

    stream_generate always ends with a response carrying the detokenizer's flushed tail. After a length cut that
    response is the last token; after end-of-sequence it is no token at all, so its text joins the piece before
    (else TextGenModel would count one token too many and could report "length" for a natural stop).
    """
    held: str | None = None
    for r in responses:
        if r.finish_reason == "stop":
            tail = (held or "") + r.text
            if held is not None or tail:
                yield tail
            return
        if held is not None:
            yield held
        held = r.text
    if held is not None:
        yield held


T = TypeVar("T")
_END = object()


class MlxThread:
    """The one thread that runs mlx in this process (mlx's streams are per thread, and mlx_lm makes its
    generation stream once, at import)."""

    _lock = threading.Lock()
    _instance: MlxThread | None = None

    def __init__(self) -> None:
        # One worker that never exits: ThreadPoolExecutor keeps its threads until shutdown.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx")
        self.call(self._own_generation_stream)

    @classmethod
    def get(cls) -> MlxThread:
        with cls._lock:
            if cls._instance is None:
                cls._instance = MlxThread()
            return cls._instance

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the mlx thread and return its result (or raise its exception)."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def iterate(self, it: Iterator[T]) -> Iterator[T]:
        """Advance ``it`` on the mlx thread, one item per call; closing this closes ``it`` there too."""
        try:
            while (item := self.call(next, it, _END)) is not _END:
                yield item
        finally:
            self.call(it.close)

    @staticmethod
    def _own_generation_stream() -> None:
        """Import mlx_lm here; when something imported it on another thread first, its generation stream is that
        thread's and unusable here, so it is replaced by one of this thread."""
        try:
            import mlx.core as mx
            import mlx_lm  # noqa: F401  (imports mlx_lm.generate, which makes the stream)
        except ImportError:
            return  # load() reports the missing extra
        generate_module = sys.modules["mlx_lm.generate"]
        try:
            with mx.stream(generate_module.generation_stream):
                mx.eval(mx.zeros(1))
        except RuntimeError:
            generate_module.generation_stream = mx.new_stream(mx.default_device())


def _load_mlx(path: Path, desired: DesiredDeployment) -> tuple[Any, Any]:
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(path))
    dtype = compute_dtype(desired, on_cpu=mx.default_device() == mx.cpu)
    if dtype is not None:
        model.set_dtype(getattr(mx, dtype))
    return model, tokenizer


def _release_mlx_memory() -> None:
    import gc

    gc.collect()
    try:
        import mlx.core as mx

        mx.clear_cache()
    except (ImportError, AttributeError):
        pass


class MlxRuntime(Runtime):
    name = "mlx"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        kwargs = generate_kwargs(desired)
        compute_dtype(desired, on_cpu=True)  # a bad dtype fails before anything loads
        path = Path(path)
        # mlx_lm.load fetches from the Hugging Face hub when given a path that does not exist: never let it.
        if not (path / "config.json").is_file():
            raise RuntimeFailure(f"artifact {desired.artifact.digest} for deployment '{desired.name}' is not an MLX "
                                 f"folder ({path} has no config.json)",
                                 hint="build the model with format: mlx (edgectl build) and upload it again")
        worker = MlxThread.get()
        try:
            mlx_lm = worker.call(importlib.import_module, "mlx_lm")
        except ImportError as e:
            raise not_installed(self.name, e) from e
        try:
            model, tokenizer = worker.call(_load_mlx, path, desired)
        except (ValueError, KeyError, OSError, RuntimeError) as e:
            raise RuntimeFailure(f"mlx-lm {mlx_lm.__version__} could not load {desired.artifact.digest} "
                                 f"({desired.artifact.model} {desired.artifact.quant}) for deployment "
                                 f"'{desired.name}': {type(e).__name__}: {e}",
                                 hint="check the artifact was built for mlx with the same mlx-lm version "
                                      f"({INSTALL_HINT}) and that the device has the memory; see the agent log") from e
        for eos in generation_eos_ids(path):
            tokenizer.add_eos_token(eos)
        return MlxModel(desired.name, path, model, tokenizer, worker, context_length=desired.context_length,
                        generate_kwargs=kwargs)


class MlxModel(TextGenModel):
    """One mlx-lm model and tokenizer; generations run one at a time (TextGenModel's lock)."""

    max_tokens_must_fit = True  # stream_generate does not stop at the context's end

    def __init__(self, name: str, folder: Path, model: Any, tokenizer: Any, worker: MlxThread, *,
                 context_length: int, generate_kwargs: dict[str, Any]) -> None:
        super().__init__(name, folder, context_length=context_length)
        self._model, self._tokenizer, self._worker = model, tokenizer, worker
        self._generate_kwargs = generate_kwargs

    def _pieces(self, prompt: str, params: GenerationParams, max_tokens: int) -> Iterator[str]:
        import mlx.core as mx
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        tokens = self._encode(prompt)
        max_tokens = self._fit_to_context(len(tokens), max_tokens)
        if params.seed is not None:
            self._worker.call(mx.random.seed, params.seed)
        # A generator: nothing runs until the mlx thread advances it.
        responses = stream_generate(self._model, self._tokenizer, tokens, max_tokens=max_tokens,
                                    sampler=make_sampler(**sampler_settings(params)), **self._generate_kwargs)
        try:
            yield from token_pieces(self._worker.iterate(responses))
        except (ValueError, RuntimeError) as e:
            raise RuntimeFailure(f"mlx failed while generating for deployment '{self.name}': {e}",
                                 hint="see the agent log; if it persists, rebuild the artifact with the agent's "
                                      f"mlx-lm version ({INSTALL_HINT})") from e

    def _free(self) -> None:
        self._model = self._tokenizer = None
        self._worker.call(_release_mlx_memory)
