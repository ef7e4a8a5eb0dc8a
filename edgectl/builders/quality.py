"""Measured quality of a built LLM artifact against its source, on one small fixed text (GGUF: llama.cpp;
OpenVINO, ONNX GenAI and MLX: that runtime vs transformers; GPTQ: transformers in the vLLM venv, :func:`measure_hf`).

    quality = measure(source_path, artifact_path, threads=4)            # GGUF, both read by llama.cpp
    quality = measure_openvino(source_folder, artifact_folder, threads=4)  # OpenVINO IR vs its Hugging Face folder
    quality = measure_onnx_genai(source_folder, artifact_folder)        # onnxruntime-genai folder vs the same
    quality = measure_mlx(source_folder, artifact_folder)               # mlx_lm folder vs the same

Both models read the same tokens (the source model's tokenization of :data:`QUALITY_TEXT`, at most
:data:`MAX_TOKENS`); from their logits at every position we compute

* the perplexity of each on the text (``source_perplexity``, ``perplexity``),
* top-1 agreement: the fraction of positions where both models' most likely next token is the same,
* the mean KL divergence KL(source || artifact) of the next-token distributions, in nats.

The text is fixed and versioned (:data:`QUALITY_TEXT_ID`) so that numbers recorded for different artifacts, and on
different days, are comparable; change it only together with the id. It is one short neutral English paragraph: a
smoke test of how much a quantization moved the model, not a benchmark.

The metric functions (:func:`perplexity`, :func:`top1_agreement`, :func:`mean_kl_divergence`) are pure numpy on
logits of shape ``(positions, vocab)`` so they are testable without llama.cpp.

OpenVINO: the source is the Hugging Face folder the artifact was built from (after a GGUF -> HF conversion, that
folder), run by transformers in float32; the artifact's IR is run by OpenVINO on the CPU with float32 inference
precision, so only the weight compression differs. Both read the tokens of the source's tokenizer, in one pass.
ONNX GenAI and MLX work the same way: the artifact folder is run by onnxruntime-genai (its ``logits`` output after
appending the tokens as one prompt, in the precision the artifact was built with) or by mlx_lm (the model called on
the tokens with its weights dequantized as MLX does it, in float32: MLX's CPU build is too slow on quantized weights),
against the source folder in float32 by transformers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgectl.spec.artifact import Quality

QUALITY_TEXT_ID = "edgectl-quality-text-v1"
QUALITY_TEXT = (
    "The town library opens at nine in the morning and closes at six in the evening. On most days a few people "
    "are already waiting at the door when it opens. Some come to read the newspaper, some to use the computers, "
    "and some to return the books they borrowed the week before. The children's room is on the first floor, "
    "next to a small garden with two benches and an old apple tree. In the afternoon, students arrive after "
    "school and work quietly at the long tables near the windows. The librarians answer questions, help visitors "
    "find what they need, and put the returned books back on the shelves. Once a month there is a talk about "
    "local history, and on Saturdays someone reads stories aloud to the youngest visitors. The building is more "
    "than a hundred years old, but the roof was repaired last year and the rooms are warm in winter."
)
MAX_TOKENS = 256
N_CTX = 512


# --- metrics on logits (no llama.cpp) ----------------------------------------------------------------------------


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def perplexity(logits: np.ndarray, tokens: np.ndarray) -> float:
    """exp(mean negative log-likelihood) of ``tokens[1:]``, each predicted by the logits of the position before
    (``logits[i]`` predicts ``tokens[i + 1]``). ``logits`` has one row per token."""
    tokens = np.asarray(tokens)
    if len(tokens) < 2:
        raise ValueError("perplexity needs at least two tokens")
    logp = _log_softmax(logits[: len(tokens) - 1])
    nll = -logp[np.arange(len(tokens) - 1), tokens[1:]]
    return float(np.exp(nll.mean()))


def top1_agreement(source_logits: np.ndarray, artifact_logits: np.ndarray) -> float:
    """Fraction of positions where both models' most likely next token is the same."""
    if source_logits.shape != artifact_logits.shape or len(source_logits) == 0:
        raise ValueError(f"logits shapes differ or are empty: {source_logits.shape} vs {artifact_logits.shape}")
    return float((source_logits.argmax(axis=-1) == artifact_logits.argmax(axis=-1)).mean())


def mean_kl_divergence(source_logits: np.ndarray, artifact_logits: np.ndarray) -> float:
    """Mean over positions of KL(source || artifact) of the next-token distributions, in nats (>= 0)."""
    if source_logits.shape != artifact_logits.shape or len(source_logits) == 0:
        raise ValueError(f"logits shapes differ or are empty: {source_logits.shape} vs {artifact_logits.shape}")
    ls, la = _log_softmax(source_logits), _log_softmax(artifact_logits)
    kl = (np.exp(ls) * (ls - la)).sum(axis=-1)
    return float(max(0.0, kl.mean()))


def compare(source_logits: np.ndarray, artifact_logits: np.ndarray, tokens: np.ndarray, *, tool: str) -> Quality:
    """The Quality record from both models' logits over the same ``tokens`` (one row per token)."""
    n = len(tokens)
    # the last position predicts a token beyond the text: only positions 0..n-2 are compared
    s, a = np.asarray(source_logits)[: n - 1], np.asarray(artifact_logits)[: n - 1]
    return Quality(text=QUALITY_TEXT_ID, text_tokens=n, source_perplexity=perplexity(source_logits, tokens),
                   perplexity=perplexity(artifact_logits, tokens), top1_agreement=top1_agreement(s, a),
                   kl_divergence=mean_kl_divergence(s, a), tool=tool)


# --- llama.cpp ---------------------------------------------------------------------------------------------------


def _logits(llama_cpp, path: Path, tokens: list[int] | None, *, threads: int) -> tuple[np.ndarray, list[int]]:
    """Load ``path``, tokenize the text if ``tokens`` is None, evaluate, and return (logits, tokens)."""
    llm = llama_cpp.Llama(str(path), n_ctx=N_CTX, n_batch=N_CTX, logits_all=True, n_threads=threads,
                          n_threads_batch=threads, verbose=False)
    try:
        if tokens is None:
            tokens = llm.tokenize(QUALITY_TEXT.encode("utf-8"), add_bos=True)[:MAX_TOKENS]
        llm.reset()
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32), tokens
    finally:
        with contextlib.suppress(Exception):
            llm.close()


def measure(source_path: Path, artifact_path: Path | None, *, threads: int = 1, quiet: bool = True) -> Quality:
    """Measure ``artifact_path`` against ``source_path`` on the fixed text. Raises on any failure (the caller
    decides whether that matters).

    ``artifact_path=None`` means the artifact is byte-identical to the source (an as-shipped copy): the source is
    evaluated once and the record says so exactly (agreement 1.0, KL 0, same perplexity) instead of measuring the
    same bytes twice.
    """
    from edgectl.builders.gguf import _captured_stderr, _llama_cpp, _llama_log_collected

    llama_cpp = _llama_cpp()
    tool = f"llama-cpp-python {llama_cpp.__version__}"
    with _llama_log_collected(llama_cpp, echo=not quiet), _captured_stderr(quiet):
        source_logits, tokens = _logits(llama_cpp, Path(source_path), None, threads=threads)
        if len(tokens) < 2:
            raise ValueError(f"the quality text tokenized to {len(tokens)} token(s) with {source_path}")
        artifact_logits = source_logits if artifact_path is None else _logits(
            llama_cpp, Path(artifact_path), tokens, threads=threads)[0]
    if artifact_logits.shape != source_logits.shape:
        raise ValueError(f"the artifact's vocabulary ({artifact_logits.shape[1]}) differs from the source's "
                         f"({source_logits.shape[1]})")
    return compare(source_logits, artifact_logits, np.array(tokens), tool=tool)



# --- OpenVINO IR vs its Hugging Face source -----------------------------------------------------------------------


def _hf_logits(folder: Path, *, threads: int) -> tuple[np.ndarray, list[int]]:
    """transformers' float32 logits of the source folder on the text, and the tokens (its tokenizer's)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokens = AutoTokenizer.from_pretrained(str(folder))(QUALITY_TEXT)["input_ids"][:MAX_TOKENS]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32)
        with torch.no_grad():
            logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    finally:
        torch.set_num_threads(before)
    return logits, list(tokens)


def openvino_inputs(names: set[str], tokens: list[int]) -> dict[str, np.ndarray]:
    """The inputs an optimum-intel stateful LLM IR takes for one pass over ``tokens`` (those of its ``names``)."""
    n = len(tokens)
    every = {"input_ids": np.array([tokens], dtype=np.int64), "attention_mask": np.ones((1, n), dtype=np.int64),
             "position_ids": np.arange(n, dtype=np.int64)[None, :], "beam_idx": np.zeros(1, dtype=np.int32)}
    missing = names - set(every)
    if missing:
        raise ValueError(f"the IR takes inputs edgectl does not know how to fill: {', '.join(sorted(missing))}")
    return {k: v for k, v in every.items() if k in names}


def _openvino_logits(folder: Path, tokens: list[int], *, threads: int) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(Path(folder) / "openvino_model.xml")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    names = {p.get_any_name() for p in compiled.inputs}
    request.infer(openvino_inputs(names, tokens))
    logits = np.array(request.get_tensor("logits").data, dtype=np.float32)[0]
    if logits.shape[0] != len(tokens):
        raise ValueError(f"the IR returned logits for {logits.shape[0]} of {len(tokens)} positions")
    return logits


def measure_openvino(source_folder: Path, artifact_folder: Path, *, threads: int = 1, quiet: bool = True) -> Quality:
    """Measure the OpenVINO LLM folder ``artifact_folder`` against the Hugging Face folder it was built from.
    Raises on any failure (the caller decides whether that matters)."""
    import openvino as ov
    import transformers

    from edgectl.builders.openvino import _tool_output

    with _tool_output(quiet):
        source_logits, tokens = _hf_logits(Path(source_folder), threads=threads)
        if len(tokens) < 2:
            raise ValueError(f"the quality text tokenized to {len(tokens)} token(s) with {source_folder}")
        artifact_logits = _openvino_logits(Path(artifact_folder), tokens, threads=threads)
    if artifact_logits.shape != source_logits.shape:
        raise ValueError(f"the artifact's logits {artifact_logits.shape} differ in shape from the source's "
                         f"{source_logits.shape}")
    tool = f"openvino {ov.__version__.split('-')[0]} vs transformers {transformers.__version__}"
    return compare(source_logits, artifact_logits, np.array(tokens), tool=tool)


# --- ONNX GenAI and MLX folders vs their Hugging Face source ---------------------------------------------------


def _onnx_genai_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(tokens) + 1, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(tokens)  # one prompt pass: the logits of every position
    return np.array(generator.get_output("logits"), dtype=np.float32)[0]


def _mlx_logits(folder: Path, tokens: list[int]) -> np.ndarray:
    import mlx.core as mx
    import mlx_lm

    from mlx_lm.utils import dequantize_model

    model, _ = mlx_lm.load(str(folder))
    # MLX's Linux CPU build multiplies quantized weights one token at a time (about 4 s a token for SmolLM2-135M
    # here, 12 minutes for the text): the weights are dequantized as MLX itself does it and run in float32, so only
    # the weight compression differs (as for OpenVINO); SmolLM2's 173 tokens then take seconds
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    return np.array(model(mx.array([tokens]))[0].astype(mx.float32))


def _against_hf(source_folder: Path, artifact_logits_of: Callable[[list[int]], np.ndarray], *, threads: int,
                tool: str) -> Quality:
    """The artifact's logits (``artifact_logits_of(tokens)``) against the Hugging Face source folder's."""
    source_logits, tokens = _hf_logits(Path(source_folder), threads=threads)
    if len(tokens) < 2:
        raise ValueError(f"the quality text tokenized to {len(tokens)} token(s) with {source_folder}")
    artifact_logits = artifact_logits_of(tokens)
    if artifact_logits.shape != source_logits.shape:
        raise ValueError(f"the artifact's logits {artifact_logits.shape} differ in shape from the source's "
                         f"{source_logits.shape}")
    return compare(source_logits, artifact_logits, np.array(tokens), tool=tool)


def measure_onnx_genai(source_folder: Path, artifact_folder: Path, *, threads: int = 1) -> Quality:
    """Measure the ONNX GenAI folder ``artifact_folder`` (genai_config.json + model.onnx) against the Hugging Face
    folder it was built from. Raises on any failure (the caller decides whether that matters)."""
    import onnxruntime_genai as og
    import transformers

    return _against_hf(source_folder, lambda tokens: _onnx_genai_logits(Path(artifact_folder), tokens),
                       threads=threads,
                       tool=f"onnxruntime-genai {og.__version__} vs transformers {transformers.__version__}")


def measure_mlx(source_folder: Path, artifact_folder: Path, *, threads: int = 1) -> Quality:
    """Measure the MLX folder ``artifact_folder`` against the Hugging Face folder it was built from. Raises on any
    failure (the caller decides whether that matters)."""
    import importlib.metadata

    import transformers

    return _against_hf(source_folder, lambda tokens: _mlx_logits(Path(artifact_folder), tokens), threads=threads,
                       tool=f"mlx-lm {importlib.metadata.version('mlx-lm')} vs transformers "
                            f"{transformers.__version__}")


# --- transformers, in the vLLM venv (gptq / compressed-tensors artifacts) ---------------------------------------


def measure_hf(source_dir: Path, artifact_dir: Path, *, threads: int = 1) -> Quality:
    """Measure a Hugging Face folder artifact (a GPTQ compressed-tensors folder) against its source folder on the
    same fixed text, both evaluated with transformers on the CPU in the vLLM venv (edgectl.builders.gptq_oneshot:
    compressed-tensors needs transformers 5). The source's tokenization is used for both."""
    import subprocess
    import tempfile

    from edgectl.builders.gptq import _venv_versions, logits_argv, worker_env
    from edgectl_agent.runtimes.vllm import venv_python

    python = venv_python()
    with tempfile.TemporaryDirectory(prefix="edgectl-quality-") as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text(QUALITY_TEXT, encoding="utf-8")
        src, art = Path(tmp) / "source.npy", Path(tmp) / "artifact.npy"
        for argv in (logits_argv(python, Path(source_dir), text, src, tokens=None, max_tokens=MAX_TOKENS,
                                 threads=threads),
                     logits_argv(python, Path(artifact_dir), text, art, tokens=Path(str(src) + ".tokens.npy"),
                                 max_tokens=MAX_TOKENS, threads=threads)):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=worker_env())
            if done.returncode != 0:
                raise RuntimeError(f"transformers could not evaluate {argv[3]}: {done.stderr.strip()[-800:]}")
        source_logits, artifact_logits = np.load(src), np.load(art)
        tokens = np.load(str(src) + ".tokens.npy")
    if len(tokens) < 2:
        raise ValueError(f"the quality text tokenized to {len(tokens)} token(s) with {source_dir}")
    if artifact_logits.shape != source_logits.shape:
        raise ValueError(f"the artifact's logits {artifact_logits.shape} differ in shape from the source's "
                         f"{source_logits.shape}")
    versions = dict(part.rsplit(" ", 1) for part in _venv_versions(str(python)).split(", "))
    return compare(source_logits, artifact_logits, tokens, tool=f"transformers {versions.get('transformers', '?')}")
