"""LLMs through openvino-genai's LLMPipeline (the ``[openvino-genai]`` extra), imported only when a model is loaded.

An artifact is the folder edgectl.builders.openvino:build_openvino_llm writes: ``openvino_model.xml/.bin`` (stateful,
compressed weights), ``openvino_tokenizer`` and ``openvino_detokenizer`` IRs, and the Hugging Face config and
tokenizer files whose chat template TextGenModel renders. The pipeline generates in a worker thread; a streamer
hands each token to the request's iterator through a queue and stops the generation when the client goes away.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, Runtime, RuntimeCapabilities, import_library
from edgectl_agent.runtimes.openvino import cache_root, load_failure, openvino_config
from edgectl_agent.runtimes.textgen import TextGenModel

REQUIRED_FILES = ("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml")
# runtime_options key -> LLMPipeline property name (besides "device").
GENAI_PROPERTIES = {"performance_hint": "PERFORMANCE_HINT", "inference_precision": "INFERENCE_PRECISION_HINT",
                    "kv_cache_precision": "KV_CACHE_PRECISION", "cache_dir": "CACHE_DIR"}
_DONE = object()


def sampling(config: Any, params: GenerationParams, max_tokens: int) -> Any:
    """Set an openvino_genai.GenerationConfig for one request (pure but for the setters; unit-tested).

    temperature 0 = greedy; None keeps the model's generation_config.json; stop strings are TextGenModel's, and the
    prompt is already templated (apply_chat_template off, or the template would be applied twice).
    """
    config.max_new_tokens = max_tokens
    config.apply_chat_template = False
    if params.temperature is not None:
        config.do_sample = params.temperature > 0
        if params.temperature > 0:
            config.temperature = params.temperature
    if params.top_p is not None:
        config.top_p = params.top_p
    if params.seed is not None:
        config.rng_seed = params.seed
    return config


class IncrementalDecoder:
    """Token ids in, one text piece per token out: the text the new token adds to the decoded sequence.

    A token ending in the middle of a UTF-8 character adds "" until the character is complete.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._sent = ""

    def piece(self, token: int) -> str:
        self._ids.append(int(token))
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        new = text[len(self._sent):]
        self._sent = text
        return new


class OpenVinoGenAIRuntime(Runtime):
    name = "openvino-genai"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> OpenVinoGenAIModel:
        device, config = openvino_config(desired, GENAI_PROPERTIES, cache=cache_root(path))
        path = Path(path)
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        if missing:
            raise RuntimeFailure(f"artifact {desired.artifact.digest} is not an openvino-genai folder: no "
                                 f"{', '.join(missing)}",
                                 hint="build the model with edgectl as format openvino (kind llm), which converts "
                                      "the tokenizer too")
        og = import_library(self.name, "openvino_genai")
        try:
            pipe = og.LLMPipeline(str(path), device, **config)
        except Exception as e:  # noqa: BLE001  (openvino-genai raises RuntimeError and OpenVINO's classes)
            import openvino as ov

            raise load_failure("openvino-genai", desired, device, e, ov.Core()) from e
        return OpenVinoGenAIModel(pipe, og, name=desired.name, folder=path, context_length=desired.context_length)


class OpenVinoGenAIModel(TextGenModel):
    def __init__(self, pipe: Any, og: Any, *, name: str, folder: Path, context_length: int) -> None:
        super().__init__(name, folder, context_length=context_length)
        self._pipe = pipe
        self._og = og
        self._tokenizer = pipe.get_tokenizer()

    def _count(self, text: str) -> int:
        return int(self._tokenizer.encode(text, add_special_tokens=False).input_ids.shape[1])

    def _pieces(self, prompt: str, params: GenerationParams, max_tokens: int) -> Iterator[str]:
        budget = self._fit_to_context(self._count(prompt), max_tokens)
        config = sampling(self._pipe.get_generation_config(), params, budget)
        pieces: queue.Queue = queue.Queue()
        cancel = threading.Event()
        streamer = _streamer_class(self._og)(IncrementalDecoder(self._tokenizer.decode), pieces.put, cancel)

        def generate() -> None:
            try:
                self._pipe.generate(prompt, config, streamer)
            except Exception as e:  # noqa: BLE001  (handed to the request's thread, which raises it)
                pieces.put(e)
            finally:
                pieces.put(_DONE)

        worker = threading.Thread(target=generate, name=f"openvino-genai-{self.name}", daemon=True)
        worker.start()
        try:
            while (item := pieces.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise BadRequest(f"openvino-genai failed to generate: {item}",
                                     hint="shorten the prompt or max_tokens; see the agent log") from item
                yield item
        finally:
            cancel.set()  # the client stopped reading (or a stop string matched): end the generation, then return
            worker.join()

    def _free(self) -> None:
        self._pipe = None
        self._tokenizer = None


@functools.cache
def _streamer_class(og: Any) -> type:
    """A StreamerBase subclass of this openvino_genai module (defined on first use: the import is lazy)."""

    class QueueStreamer(og.StreamerBase):
        """Decodes each generated token and puts its text on a queue; stops when asked to."""

        def __init__(self, decoder: IncrementalDecoder, put: Callable[[str], None], cancel: threading.Event):
            super().__init__()
            self._decoder, self._put, self._cancel = decoder, put, cancel

        def write(self, token: int | list[int]) -> Any:
            for t in token if isinstance(token, list) else [token]:
                self._put(self._decoder.piece(t))
            return og.StreamingStatus.STOP if self._cancel.is_set() else og.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return QueueStreamer


__all__ = ["OpenVinoGenAIRuntime", "OpenVinoGenAIModel", "IncrementalDecoder", "sampling"]
