"""ONNX LLMs through onnxruntime-genai (the ``[onnx-genai]`` extra), imported only when a model is loaded.

An artifact is the folder the onnxruntime-genai model builder writes (genai_config.json, model.onnx, its external
data, tokenizer files). Before the library sees it, model.onnx's external data must lie inside the folder (as for
tensor models). Generation: greedy unless a temperature > 0 asks for sampling; text comes out through the library's
tokenizer stream, one decoded piece per token. The OpenAI layer (templates, stop strings, streaming) is TextGenModel.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, Runtime, RuntimeCapabilities, import_library
from edgectl_agent.runtimes.onnxruntime import check_external_data
from edgectl_agent.runtimes.textgen import TextGenModel
from edgectl_agent.tree import TreeError, check_relpath



def genai_config(folder: Path) -> dict[str, Any]:
    """genai_config.json of an artifact folder; RuntimeFailure if it is not an onnxruntime-genai folder."""
    path = folder / "genai_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"artifact folder {folder.name} has no readable genai_config.json: {e}",
                             hint="build the artifact with format onnx for an llm (the onnxruntime-genai builder)") from e
    model = config.get("model") if isinstance(config, dict) else None
    decoder = model.get("decoder", {}) if isinstance(model, dict) else None
    if not isinstance(decoder, dict) or not isinstance(decoder.get("filename"), str):
        raise RuntimeFailure(f"{path.name} names no decoder model file",
                             hint="rebuild the artifact with the onnxruntime-genai model builder")
    for key, name in _filenames(config):
        try:
            check_relpath(name)
        except TreeError as e:  # '../x' or '/x' would make the library load a model from outside the artifact
            raise RuntimeFailure(f"{path.name} refused: {key} {name[:80]!r} is not a file inside the artifact "
                                 f"folder ({e})", hint="rebuild the artifact with the onnxruntime-genai model "
                                 "builder; every file it names is relative to the folder") from e
    return config


def _filenames(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(key path, value) of every ``*filename`` entry of a genai_config (decoder, encoder, embedding, vision, ...)."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if str(key).endswith("filename") and value is not None:
                yield here, value if isinstance(value, str) else repr(value)
            else:
                yield from _filenames(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _filenames(value, f"{where}[{i}]")


def search_options(params: GenerationParams, prompt_tokens: int, max_tokens: int,
                   context_length: int) -> dict[str, Any]:
    """onnxruntime-genai search options for one request (max_length counts the prompt too)."""
    options: dict[str, Any] = {"max_length": min(prompt_tokens + max_tokens, context_length)}
    temperature = params.temperature if params.temperature is not None else 0.0
    if temperature > 0:
        options |= {"do_sample": True, "temperature": temperature, "top_p": params.top_p if params.top_p else 1.0,
                    "top_k": 0}
        if params.seed is not None:
            options["random_seed"] = params.seed
    else:
        options["do_sample"] = False
    return options


def session_overlay(threads: int | None) -> str | None:
    """genai_config overlay (JSON) that holds the decoder's onnxruntime session to ``threads`` intra-op threads, or
    None to keep onnxruntime's default (pure; unit-tested). Inter-op threads stay 1: one sequence runs at a time.
    Without it onnxruntime takes one thread per physical core, whatever the deployment says."""
    if threads is None:
        return None
    return json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": int(threads),
                                                                 "inter_op_num_threads": 1}}}})


class GenaiModel(TextGenModel):
    def __init__(self, name: str, folder: Path, og: Any, model: Any, *, context_length: int,
                 eos: frozenset[int]) -> None:
        super().__init__(name, folder, context_length=context_length)
        self._og, self._model = og, model
        self._tokenizer = og.Tokenizer(model)
        self._eos = eos  # the end token is not text: it ends the answer instead of being yielded

    def _count(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def _pieces(self, prompt: str, params: GenerationParams, max_tokens: int) -> Iterator[str]:
        tokens = self._tokenizer.encode(prompt)
        max_tokens = self._fit_to_context(len(tokens), max_tokens)
        gp = self._og.GeneratorParams(self._model)
        gp.set_search_options(**search_options(params, len(tokens), max_tokens, self.context_length))
        generator = self._og.Generator(self._model, gp)
        stream = self._tokenizer.create_stream()
        try:
            generator.append_tokens(tokens)
            n = 0
            while n < max_tokens and not generator.is_done():
                generator.generate_next_token()
                n += 1
                token = int(generator.get_next_tokens()[0])
                if token in self._eos:
                    return
                yield stream.decode(token)
        finally:
            del generator

    def _free(self) -> None:
        self._tokenizer = None
        self._model = None


class OnnxGenaiRuntime(Runtime):
    name = "onnxruntime-genai"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> GenaiModel:
        og = import_library(self.name, "onnxruntime_genai")
        if desired.runtime_options:
            raise RuntimeFailure(f"deployment '{desired.name}': onnxruntime-genai takes no runtime_options "
                                 f"({sorted(desired.runtime_options)})", hint="remove runtime_options")
        path = Path(path)
        if not path.is_dir():
            raise RuntimeFailure(f"artifact {desired.artifact.digest} is a single file, not an onnxruntime-genai "
                                 f"folder", hint="build format onnx for an llm: it yields a folder artifact")
        config = genai_config(path)
        check_external_data(path / config["model"]["decoder"]["filename"])
        try:
            og_config = og.Config(str(path))
            og_config.clear_providers()  # CPU
            overlay = session_overlay(desired.threads)
            if overlay is not None:
                og_config.overlay(overlay)
            model = og.Model(og_config)
        except Exception as e:  # noqa: BLE001 — the library raises RuntimeError/OrtException
            raise RuntimeFailure(f"onnxruntime-genai could not load {desired.artifact.digest} "
                                 f"({desired.artifact.model}) for deployment '{desired.name}': {e}",
                                 hint=f"check the artifact was built for this onnxruntime-genai version "
                                      f"({getattr(og, '__version__', '?')}); see the agent log") from e
        model_context = int(config["model"].get("context_length") or desired.context_length)
        eos = config["model"].get("eos_token_id", [])
        return GenaiModel(desired.name, path, og, model, context_length=min(desired.context_length, model_context),
                          eos=frozenset(eos if isinstance(eos, list) else [eos]))
