"""GGUF builder: quantize a GGUF with llama.cpp (through llama-cpp-python).

llama_cpp is imported lazily; without it only as-shipped copies (done by edgectl.builders.build) can be built.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgectl.builders.registry import GGUF_FTYPES, UNQUANTIZED_PRECISIONS, check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.progress import StageProgress
from edgectl.spec.artifact import Recipe

GGUF_MAGIC = b"GGUF"



def _llama_cpp():
    return require_module("llama_cpp", "gguf")


def check_gguf_file(path: Path) -> None:
    """Fail early, with the path, when a source is not a GGUF file or its header is malformed or crafted: the agent's
    bounded header check (the one every device runs before llama.cpp) runs here before llama.cpp reads it."""
    from edgectl_agent.gguf_check import InvalidGGUF, check_gguf

    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise BuildError(f"cannot read source {path}: {e.strerror}", hint="check the source path and its permissions") from e
    if magic != GGUF_MAGIC:
        raise BuildError(f"source {path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})",
                         hint="point the model source at a .gguf file, or convert the model with "
                              "llama.cpp's convert_hf_to_gguf.py first")
    try:
        check_gguf(path, label=f"source {path}")
    except InvalidGGUF as e:
        raise BuildError(e.message, hint="download or convert the source again; a file that fails this check would "
                                         "be refused by every device's agent") from e


@contextlib.contextmanager
def _captured_stderr(enabled: bool) -> Iterator[list[str]]:
    """Silence what C code prints straight to fd 2 while it runs. Yields a list filled, on exit, with the lines
    written, so errors can quote them."""
    lines: list[str] = []
    if not enabled:
        yield lines
        return
    with tempfile.TemporaryFile(mode="w+b") as c_buffer:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved_fd = os.dup(2)
        try:
            os.dup2(c_buffer.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            c_buffer.seek(0)
            lines.extend(c_buffer.read().decode("utf-8", errors="replace").splitlines())


@contextlib.contextmanager
def _llama_log_collected(llama_cpp, *, echo: bool) -> Iterator[list[str]]:
    """Route llama.cpp's log through our own callback while it runs, and yield the lines, filled on exit.

    llama-cpp-python's callback filters by a process-wide level that any ``Llama(verbose=False)`` lowers, and its
    level table predates ggml's current one, so llama.cpp's own error lines can vanish; this one keeps them all.
    Afterwards llama-cpp-python's callback is put back.
    """
    chunks: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        piece = text.decode("utf-8", errors="replace")
        chunks.append(piece)
        if echo:
            sys.stderr.write(piece)

    lines: list[str] = []
    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        lines.extend("".join(chunks).splitlines())


def _failure_detail(lines: list[str]) -> str:
    """The most telling lines of llama.cpp's output: the ones that say 'failed' or 'error', else the last ones."""
    reason = [m.group(1).strip() for ln in lines if (m := re.search(r"failed to quantize: (.*)", ln))]
    if reason:  # llama_model_quantize's own one-line reason, without the progress text before it
        return reason[-1]
    telling = [ln.strip() for ln in lines if "fail" in ln.lower() or "error" in ln.lower()]
    return "; ".join((telling or [ln.strip() for ln in lines if ln.strip()])[-3:])


def _hint_for(detail: str) -> str:
    if "requantizing" in detail:
        return ("the source is already quantized; set the model source's 'precision' to the file's real type "
                "(e.g. Q4_1, as general.file_type says) so edgectl allows requantization")
    if "failed to load model" in detail or "failed to read" in detail:
        return "the source GGUF is truncated or corrupt; download it again (or fix its sha256 in the catalog)"
    return "run again with EDGECTL_DEBUG=1 to see llama.cpp's full output"


def quantize_gguf(source: Path, out: Path, *, quant: str, threads: int, allow_requantize: bool,
                  quiet: bool = True) -> None:
    """Run llama.cpp's quantizer ``source`` -> ``out`` at ``quant``. Raises BuildError (with llama.cpp's own
    reason) when it fails; ``out`` may then hold a partial file, which the caller removes."""
    llama_cpp = _llama_cpp()
    try:
        ftype = getattr(llama_cpp, GGUF_FTYPES[quant])
    except (KeyError, AttributeError):
        raise BuildError(f"llama-cpp-python {llama_cpp.__version__} cannot quantize to {quant!r}",
                         hint=f"use one of: {', '.join(GGUF_FTYPES)}, or upgrade: pip install -U llama-cpp-python") from None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = max(1, threads)
    params.allow_requantize = allow_requantize
    with _llama_log_collected(llama_cpp, echo=not quiet) as log_lines, _captured_stderr(quiet) as c_lines:
        rc = llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(out), ctypes.byref(params))
    if rc != 0:
        detail = _failure_detail(log_lines + c_lines) or f"return code {rc}"
        raise BuildError(f"llama.cpp failed to quantize {source} to {quant}: {detail}",
                         hint=_hint_for(detail))
    if not out.is_file() or out.stat().st_size == 0:
        raise BuildError(f"llama.cpp reported success but wrote no file at {out}",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")


def build_gguf(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
               progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Quantize the GGUF at ``source_path`` to ``recipe.quant`` into ``out_path`` with llama.cpp.

    Copies as shipped and removing ``out_path`` on failure are the caller's (edgectl.builders.build).
    """
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    check_gguf_file(source_path)
    if progress:
        progress("quantize", 0, None)
    quantize_gguf(source_path, out_path, quant=recipe.quant, threads=threads or os.cpu_count() or 1,
                  allow_requantize=recipe.source_precision.upper() not in UNQUANTIZED_PRECISIONS, quiet=quiet)
    if progress:
        progress("quantize", 1, 1)
