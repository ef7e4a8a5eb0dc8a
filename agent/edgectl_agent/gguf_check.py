"""A bounded GGUF header check, run before a GGUF file reaches llama.cpp.

llama.cpp parses GGUF headers in C: crafted counts, lengths, dimensions and offsets have been heap-overflow and
huge-allocation bugs there. This module walks the same header in pure Python (the agent stays minimal: no numpy,
no gguf package) and refuses anything a well-formed file never contains, so a crafted artifact fails its activation
with a clear 422 (type ``invalid_gguf``) and never reaches the C parser.

Bounded by construction: every length and count read from the file is checked against the bytes left in the file
and against a cap *before* anything is read or allocated for it; skipped strings and scalar arrays are seeked over,
not read; the file is read through one window of at most ``WINDOW_BYTES`` (plus the few strings kept: keys, tensor
names, the chat template). The total number of items walked is capped, so time is bounded too.

Layout (little-endian, GGUF v2/v3): magic "GGUF", u32 version, u64 tensor count, u64 KV count; KVs (string key, u32
value type, value); tensor infos (string name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64 offset); padding to
``general.alignment``; tensor data, each tensor at its offset from the start of the data section.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from edgectl_agent.errors import Unprocessable

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)  # v1 (32-bit counts) is long gone from llama.cpp
DEFAULT_ALIGNMENT = 32
GGML_MAX_DIMS = 4
GGML_MAX_NAME = 64  # llama.cpp refuses tensor names of this many bytes or more

# Caps far above any real model (vocabularies reach ~260k tokens, merges ~500k, tensor counts a few thousand) and
# far below what would let a crafted header cost memory or minutes.
MAX_TENSORS = 1 << 16
MAX_KV = 1 << 14
MAX_KEY_BYTES = 1024
MAX_STRING_BYTES = 16 << 20  # one string value (chat templates are tens of KB)
MAX_ARRAY_LENGTH = 1 << 24
MAX_ARRAY_DEPTH = 2  # an array of arrays at most (llama.cpp itself reads no nesting)
MAX_ITEMS = 1 << 23  # KVs + array elements walked one by one + tensors: bounds the time of one check
WINDOW_BYTES = 1 << 20

HINT = ("the file is corrupt or was crafted; rebuild the artifact (edgectl build, or llama.cpp's convert_hf_to_gguf.py "
        "+ llama-quantize) and push it again")

# GGUF value types -> fixed size in bytes (STRING = 8 and ARRAY = 9 have variable sizes).
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_VALUE_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32", 6: "float32",
                     7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64", 12: "float64"}

# ggml tensor types -> (name, elements per block, bytes per block), as in ggml's type traits
# (gguf-py's GGML_QUANT_SIZES). Types llama.cpp removed (4, 5, 31-33 Q4_0_4_4 ...) are refused.
QK_K = 256
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 2 + 16),
    3: ("Q4_1", 32, 2 + 2 + 16),
    6: ("Q5_0", 32, 2 + 4 + 16),
    7: ("Q5_1", 32, 2 + 2 + 4 + 16),
    8: ("Q8_0", 32, 2 + 32),
    9: ("Q8_1", 32, 4 + 4 + 32),
    10: ("Q2_K", QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    11: ("Q3_K", QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    12: ("Q4_K", QK_K, 2 + 2 + QK_K // 2 + 12),
    13: ("Q5_K", QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    14: ("Q6_K", QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    15: ("Q8_K", QK_K, 4 + QK_K + QK_K // 8),
    16: ("IQ2_XXS", QK_K, 2 + QK_K // 4),
    17: ("IQ2_XS", QK_K, 2 + QK_K // 4 + QK_K // 32),
    18: ("IQ3_XXS", QK_K, 2 + QK_K // 4 + QK_K // 8),
    19: ("IQ1_S", QK_K, 2 + QK_K // 8 + QK_K // 16),
    20: ("IQ4_NL", 32, 2 + 16),
    21: ("IQ3_S", QK_K, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    22: ("IQ2_S", QK_K, 2 + QK_K // 4 + QK_K // 16),
    23: ("IQ4_XS", QK_K, 2 + 2 + QK_K // 2 + QK_K // 64),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", QK_K, QK_K // 8 + QK_K // 16 + QK_K // 32),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", QK_K, 2 + 4 * 13),
    35: ("TQ2_0", QK_K, 2 + 64),
    39: ("MXFP4", 32, 1 + 16),
    40: ("NVFP4", 64, 4 + 32),
    41: ("Q1_0", 128, 2 + 16),
    42: ("Q2_0", 64, 2 + 16),
}

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_HEADER = struct.Struct("<4sIQQ")
# Smallest possible encodings, to refuse counts the file's size cannot hold before walking them.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, value type, a 1-byte value
_MIN_TENSOR_BYTES = 8 + 1 + 4 + 8 + 4 + 8  # name length, a 1-byte name, n_dims, one dim, type, offset


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int  # from the start of the data section
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """What the check read: enough for the agent to decide about the file without llama.cpp."""

    version: int
    alignment: int
    data_offset: int  # where the data section starts in the file
    tensors: tuple[TensorInfo, ...]
    architecture: str | None
    chat_template: str | None
    kv_count: int


class InvalidGGUF(Unprocessable):
    """A GGUF file that the header check refuses (never handed to llama.cpp)."""

    type = "invalid_gguf"


# Keys whose string values are kept (everything else is seeked over).
_KEPT_STRINGS = ("general.architecture", "tokenizer.chat_template")


class _Cursor:
    """Reads a file through one bounded window; every read first checks the bytes left in the file."""

    def __init__(self, f: BinaryIO, size: int, label: str) -> None:
        self.f, self.size, self.label = f, size, label
        self.pos = 0
        self.buf = b""
        self.buf_start = 0
        self.items = 0

    def fail(self, what: str, at: int | None = None) -> InvalidGGUF:
        return InvalidGGUF(f"{self.label}: invalid GGUF header at byte {self.pos if at is None else at}: {what}",
                           hint=HINT, code="invalid_gguf")

    def need(self, n: int, what: str) -> None:
        """Make ``n`` bytes at ``pos`` available in the window (``n`` is at most a checked cap)."""
        if n > self.size - self.pos:
            raise self.fail(f"{what} needs {n} bytes, only {self.size - self.pos} are left in the "
                            f"{self.size}-byte file")
        if self.pos + n > self.buf_start + len(self.buf):
            self.f.seek(self.pos)
            self.buf = self.f.read(max(n, WINDOW_BYTES))
            self.buf_start = self.pos
            if len(self.buf) < n:  # the file shrank under us
                raise self.fail(f"{what}: the file ended early")

    def u32(self, what: str) -> int:
        self.need(4, what)
        value = _U32.unpack_from(self.buf, self.pos - self.buf_start)[0]
        self.pos += 4
        return value

    def u64(self, what: str) -> int:
        self.need(8, what)
        value = _U64.unpack_from(self.buf, self.pos - self.buf_start)[0]
        self.pos += 8
        return value

    def skip(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"{what} is {n} bytes long, past the end of the {self.size}-byte file "
                            f"({self.size - self.pos} bytes left)")
        self.pos += n

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        start = self.pos - self.buf_start
        self.pos += n
        return self.buf[start:start + n]

    def count(self, n: int = 1) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise self.fail(f"more than {MAX_ITEMS} keys, array elements and tensors in one header")

    def string_length(self, what: str, cap: int) -> int:
        at = self.pos
        n = self.u64(f"length of {what}")
        if n > cap:
            raise self.fail(f"{what} claims {n} bytes, more than the {cap} allowed", at)
        if n > self.size - self.pos:
            raise self.fail(f"{what} claims {n} bytes, past the end of the file ({self.size - self.pos} bytes "
                            "left)", at)
        return n

    def text(self, what: str, cap: int) -> str:
        raw = self.take(self.string_length(what, cap), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"{what} is not UTF-8 ({e.reason} at byte {e.start})") from e


def _skip_strings(c: _Cursor, count: int, what: str) -> None:
    """Seek over ``count`` strings (the hot loop: vocabularies and merges), with the window in locals."""
    unpack, limit = _U64.unpack_from, min(MAX_STRING_BYTES, c.size)
    buf, base, pos, end = c.buf, c.buf_start, c.pos, c.buf_start + len(c.buf)
    for i in range(count):
        if pos + 8 > end:  # the length is outside the window: the slow path refills it
            c.pos = pos
            c.skip(c.string_length(f"{what}[{i}]", MAX_STRING_BYTES), f"{what}[{i}]")
            buf, base, pos, end = c.buf, c.buf_start, c.pos, c.buf_start + len(c.buf)
            continue
        n = unpack(buf, pos - base)[0]
        if n > limit or n > c.size - pos - 8:
            c.pos = pos
            c.string_length(f"{what}[{i}]", MAX_STRING_BYTES)  # raises with the precise reason
        pos += 8 + n
    c.pos = pos


def _value_type(c: _Cursor, what: str) -> int:
    at = c.pos
    vtype = c.u32(f"value type of {what}")
    if vtype not in _VALUE_TYPE_NAMES:
        raise c.fail(f"{what} has unknown value type {vtype} (GGUF knows 0..12)", at)
    return vtype


def _skip_value(c: _Cursor, vtype: int, what: str, depth: int = 0) -> None:
    if vtype in _SCALAR_SIZES:
        c.skip(_SCALAR_SIZES[vtype], what)
    elif vtype == _STRING:
        c.skip(c.string_length(what, MAX_STRING_BYTES), what)
    else:  # array: element type, count, elements
        if depth >= MAX_ARRAY_DEPTH:
            raise c.fail(f"{what} nests arrays deeper than {MAX_ARRAY_DEPTH}")
        etype = _value_type(c, f"elements of {what}")
        at = c.pos
        n = c.u64(f"length of {what}")
        if n > MAX_ARRAY_LENGTH:
            raise c.fail(f"{what} claims {n} elements, more than the {MAX_ARRAY_LENGTH} allowed", at)
        smallest = _SCALAR_SIZES.get(etype, 8 if etype == _STRING else 12)
        if n * smallest > c.size - c.pos:
            raise c.fail(f"{what} claims {n} {_VALUE_TYPE_NAMES[etype]} elements, at least {n * smallest} bytes, "
                         f"past the end of the file ({c.size - c.pos} bytes left)", at)
        if etype in _SCALAR_SIZES:
            c.skip(n * smallest, what)
        elif etype == _STRING:
            c.count(n)
            _skip_strings(c, n, what)
        else:
            c.count(n)
            for i in range(n):
                _skip_value(c, _ARRAY, f"{what}[{i}]", depth + 1)


def _tensor_info(c: _Cursor, index: int, names: set[str]) -> tuple[str, tuple[int, ...], int, int, int]:
    start = c.pos
    name_len = c.string_length(f"name of tensor #{index}", MAX_STRING_BYTES)
    if name_len == 0 or name_len >= GGML_MAX_NAME:
        raise c.fail(f"tensor #{index} has a {name_len}-byte name (1..{GGML_MAX_NAME - 1} allowed)", start)
    raw = c.take(name_len, f"name of tensor #{index}")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise c.fail(f"the name of tensor #{index} is not UTF-8", start) from e
    if name in names:
        raise c.fail(f"tensor '{name}' appears twice", start)
    names.add(name)
    at = c.pos
    n_dims = c.u32(f"n_dims of tensor '{name}'")
    if not 1 <= n_dims <= GGML_MAX_DIMS:
        raise c.fail(f"tensor '{name}' has {n_dims} dimensions (1..{GGML_MAX_DIMS} allowed)", at)
    at = c.pos
    shape = tuple(c.u64(f"dimension {d} of tensor '{name}'") for d in range(n_dims))
    elements = 1
    for d in shape:
        elements *= d
    # dims are int64 in ggml: a value above INT64_MAX reads as negative there, and 0 divides by zero in its checks.
    if any(d == 0 or d >= 1 << 63 for d in shape) or elements >= 1 << 63:
        raise c.fail(f"tensor '{name}' has shape {list(shape)}: every dimension must be >= 1 and their product "
                     "must fit in int64", at)
    at = c.pos
    ggml_type = c.u32(f"type of tensor '{name}'")
    if ggml_type not in GGML_TYPES:
        raise c.fail(f"tensor '{name}' has unknown ggml type {ggml_type}", at)
    type_name, block, type_size = GGML_TYPES[ggml_type]
    if shape[0] % block:
        raise c.fail(f"tensor '{name}' of type {type_name} has rows of {shape[0]} elements, not a multiple of its "
                     f"block size {block}", at)
    nbytes = elements // block * type_size
    offset = c.u64(f"data offset of tensor '{name}'")
    return name, shape, ggml_type, offset, nbytes


def check_gguf(path: Path, *, label: str | None = None) -> GGUFHeader:
    """Walk the header of the GGUF file at ``path``; InvalidGGUF (422) on anything llama.cpp must never see.

    ``label`` names the file in messages (default: the path).
    """
    path = Path(path)
    label = label or str(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            return _check(f, size, label)
    except OSError as e:
        raise InvalidGGUF(f"{label}: cannot read the GGUF file: {e}", hint="check the artifact is in the store "
                          "and readable by the agent; push it again", code="invalid_gguf") from e


def _check(f: BinaryIO, size: int, label: str) -> GGUFHeader:
    c = _Cursor(f, size, label)
    head = c.take(min(size, _HEADER.size), "header")
    if head[:4] != MAGIC:
        raise c.fail(f"not a GGUF file: it starts with {head[:4]!r}, not {MAGIC!r}", 0)
    if len(head) < _HEADER.size:
        raise c.fail(f"the file has {size} bytes, less than the {_HEADER.size}-byte GGUF header", 0)
    _, version, n_tensors, n_kv = _HEADER.unpack(head)
    if version not in SUPPORTED_VERSIONS:
        endian = " (a big-endian file?)" if version >> 24 in SUPPORTED_VERSIONS else ""
        raise c.fail(f"GGUF version {version}{endian} is not supported (versions {SUPPORTED_VERSIONS} are)", 4)
    left = size - c.pos
    if n_tensors > MAX_TENSORS or n_tensors * _MIN_TENSOR_BYTES > left:
        raise c.fail(f"the header claims {n_tensors} tensors; at most {min(MAX_TENSORS, left // _MIN_TENSOR_BYTES)} "
                     f"are possible in this {size}-byte file (cap {MAX_TENSORS})", 8)
    if n_kv > MAX_KV or n_kv * _MIN_KV_BYTES + n_tensors * _MIN_TENSOR_BYTES > left:
        raise c.fail(f"the header claims {n_kv} key-value pairs; at most {min(MAX_KV, left // _MIN_KV_BYTES)} are "
                     f"possible in this {size}-byte file (cap {MAX_KV})", 16)

    alignment = DEFAULT_ALIGNMENT
    kept: dict[str, str] = {}
    keys: set[str] = set()
    c.count(n_kv)
    for i in range(n_kv):
        at = c.pos
        key = c.text(f"key #{i}", MAX_KEY_BYTES)
        if not key:
            raise c.fail(f"key #{i} is empty", at)
        if key in keys:
            raise c.fail(f"key '{key}' appears twice", at)
        keys.add(key)
        vtype = _value_type(c, f"key '{key}'")
        if key == "general.alignment":
            if vtype != _UINT32:  # llama.cpp asserts (aborts) on any other type
                raise c.fail(f"general.alignment is a {_VALUE_TYPE_NAMES[vtype]}, it must be a uint32", at)
            alignment = c.u32("general.alignment")
            if alignment == 0 or alignment & (alignment - 1):
                raise c.fail(f"general.alignment is {alignment}, it must be a power of two", at)
        elif key in _KEPT_STRINGS and vtype == _STRING:
            kept[key] = c.text(f"value of '{key}'", MAX_STRING_BYTES)
        else:
            _skip_value(c, vtype, f"value of '{key}'")

    c.count(n_tensors)
    names: set[str] = set()
    raw_tensors = [_tensor_info(c, i, names) for i in range(n_tensors)]
    data_offset = -(-c.pos // alignment) * alignment
    if raw_tensors and data_offset > size:  # without tensors the padding may be left out (vocab-only files)
        raise c.fail(f"the data section would start at byte {data_offset}, past the end of the {size}-byte file")
    tensors = []
    for name, shape, ggml_type, offset, nbytes in raw_tensors:
        type_name = GGML_TYPES[ggml_type][0]
        if offset % alignment:
            raise c.fail(f"tensor '{name}' data offset {offset} is not a multiple of the alignment {alignment}",
                         data_offset)
        end = data_offset + offset + nbytes
        if end > size:
            raise c.fail(f"tensor '{name}' ({type_name} {list(shape)}, {nbytes} bytes at data offset {offset}) ends at "
                         f"byte {end}, past the end of the {size}-byte file", data_offset)
        tensors.append(TensorInfo(name, shape, type_name, offset, nbytes))
    return GGUFHeader(version=version, alignment=alignment, data_offset=data_offset, tensors=tuple(tensors),
                      architecture=kept.get("general.architecture"),
                      chat_template=kept.get("tokenizer.chat_template"), kv_count=n_kv)
