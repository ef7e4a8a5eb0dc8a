"""Fuzzing the manifest loader (issue 06, case 10) with hypothesis: random YAML-ish text, random documents shaped like
manifests, and mutations of the shipped manifests. The loader may accept or refuse, but it refuses only with
edgectl's own error (every error with a message and a location or hint), and never hangs (each call runs under an
alarm). Inputs the fuzzers found are kept below as explicit regression tests.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgectl.errors import EdgectlError, SpecErrors
from edgectl.load import load_paths, load_text
from edgectl.spec import API_VERSION, KINDS

REPO = Path(__file__).resolve().parents[2]
SHIPPED = [p.read_text() for p in sorted((REPO / "manifests").rglob("*.yaml"))]
pytestmark = pytest.mark.filterwarnings("ignore::ruamel.yaml.error.ReusedAnchorWarning")
CALL_LIMIT_S = 5  # one load of a few hundred bytes takes milliseconds; more than this is a hang
# Bounded: ~100 inputs per fuzzer, a few seconds each (the pure-Python YAML parser takes ~10-30 ms per input).
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
COUNTS: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    """After the module: how many inputs each fuzzer tried (the figures in docs/security.md; shown with -s)."""
    yield
    if COUNTS:
        print(f"\nmanifest fuzz cases: {COUNTS} total {sum(COUNTS.values())}")


@contextlib.contextmanager
def alarm(seconds: int):
    def expired(signum, frame):
        raise TimeoutError(f"the loader ran for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_load(text: str, counter: str) -> None:
    """``load_text(text)`` returns documents or raises SpecErrors whose errors all carry a message and a place."""
    COUNTS[counter] = COUNTS.get(counter, 0) + 1
    try:
        with alarm(CALL_LIMIT_S):
            load_text(text, "fuzz.yaml")
    except SpecErrors as e:
        assert e.errors and e.exit_code == 2
        for err in e.errors:
            assert isinstance(err, EdgectlError) and err.message.strip(), err
            assert err.where or err.hint, err
            assert str(err)  # renders
    # anything else (TypeError, RecursionError, TimeoutError, ...) propagates and fails the test


YAML_CHARS = list(":-[]{}!&*#|>'\"%@`,?.~=\\/ \n\t") + ["\n  ", "\n- ", ": ", "---\n", "...\n", "\u00e9", "\x00",
                                                      "\ufeff", "\x85", "\u2028"]
WORDS = ["apiVersion", "kind", "metadata", "name", "spec", "devices", "profile", "transport", "type", "ssh", "local",
         "docker", "host", "labels", "selector", "model", "sources", "architecture", API_VERSION, *KINDS, "null",
         "true", "1e400", "0x10", "-1", ".inf", "!!python/object:os.system", "<<", "&a", "*a", "!!binary"]


RUNS = st.builds(lambda piece, n: piece * n, st.sampled_from(["[", "{a: ", "- ", " - ", "\n  - ", "&a [*a, "]),
                 st.integers(1, 400))  # long runs of one opener: nesting far beyond any manifest


@FUZZ
@given(st.lists(st.sampled_from(YAML_CHARS + WORDS) | st.text(max_size=5) | RUNS, max_size=60).map("".join))
def test_random_yamlish_text_is_accepted_or_refused_with_a_message(text):
    check_load(text, "yamlish text")


def scalars():
    return (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
            | st.text(max_size=20) | st.sampled_from(WORDS))


def values():
    return st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=8), inner, max_size=4),
                        max_leaves=20)


def documents():
    return st.fixed_dictionaries(
        {"apiVersion": st.sampled_from([API_VERSION, "v1", None]) | scalars(),
         "kind": st.sampled_from(list(KINDS)) | scalars(),
         "metadata": st.fixed_dictionaries({"name": st.sampled_from(["a", "pi", "-x", "a;b", ""]) | scalars()})
         | values(),
         "spec": values()},
        optional={"extra": values()})


def dump(docs: list) -> str:
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="safe", pure=True)
    out = io.StringIO()
    yaml.dump_all(docs, out)
    return out.getvalue()


@FUZZ
@given(st.lists(documents(), min_size=1, max_size=3))
def test_random_manifest_shaped_documents_are_accepted_or_refused_with_a_message(docs):
    check_load(dump(docs), "manifest-shaped documents")


@FUZZ
@given(st.sampled_from(SHIPPED), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 40),
                                                    st.sampled_from(YAML_CHARS + WORDS + [""])), min_size=1, max_size=6))
def test_mutated_shipped_manifests_are_accepted_or_refused_with_a_message(text, edits):
    for at, cut, insert in edits:
        at %= len(text) + 1
        text = text[:at] + insert + text[at + cut:]
    check_load(text, "mutated shipped manifests")


@settings(max_examples=60, deadline=None, database=None)
@given(st.binary(max_size=300))
def test_random_bytes_in_a_manifest_file_are_refused_with_a_message(data):
    COUNTS["bytes in a file"] = COUNTS.get("bytes in a file", 0) + 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fleet.yaml"
        path.write_bytes(data)
        try:
            with alarm(CALL_LIMIT_S):
                load_paths([path], builtins=False)
        except SpecErrors as e:
            assert all(err.message.strip() and err.where for err in e.errors), [str(x) for x in e.errors]


# -- regressions: inputs that broke the loader -------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "[" * 5000,                                          # ruamel's composer recursed until RecursionError
    "[" * 40_000,                                        # ... and its scanner took minutes on this
    "a:\n" + "".join(" " * i + "- \n" for i in range(1, 3000)),
    "- " * 3000 + "x",
    "{a: " * 3000 + "b" + "}" * 3000,
])
def test_deeply_nested_input_is_a_spec_error_not_a_recursion_error_or_a_hang(text):
    with pytest.raises(SpecErrors) as e:
        with alarm(CALL_LIMIT_S):
            load_text(text, "deep.yaml")
    [err] = e.value.errors
    assert err.message == "this value nests deeper than 64 levels" and err.where.startswith("deep.yaml:")
    assert "unclosed '['" in err.hint


DEPLOYMENT = f"""\
apiVersion: {API_VERSION}
kind: Deployment
metadata: {{name: chat}}
spec:
  model: tiny
  selector: {{devices: [pi]}}
  runtime_options:
"""


def test_an_alias_bomb_is_refused_before_it_is_expanded():
    """Billion laughs in runtime_options (typed Any, so validation never walks it): the loader accepted it, and the
    first step that walked it (the plan's comparison, the JSON sent to the agent) expanded 10**9 values."""
    bomb = DEPLOYMENT + "    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 9))
    with pytest.raises(SpecErrors) as e:
        with alarm(CALL_LIMIT_S):
            load_text(bomb, "bomb.yaml")
    [err] = e.value.errors
    assert "expand this value to more than 100000 values" in err.message and err.where == "bomb.yaml:12:9"  # at a4, the first alias past the bound
    # a few aliases are fine
    [doc] = load_text(DEPLOYMENT + "    a: &a [1, 2]\n    b: *a\n", "ok.yaml")
    assert doc.spec.runtime_options == {"a": [1, 2], "b": [1, 2]}


def test_a_recursive_alias_is_refused_where_it_loops():
    """``&a {x: *a}`` in runtime_options loaded as a self-containing dict; serializing it later raised."""
    with pytest.raises(SpecErrors) as e:
        load_text(DEPLOYMENT + "    loop: &a {x: *a}\n", "loop.yaml")
    [err] = e.value.errors
    assert "refers to a value that contains it" in err.message and err.where == "loop.yaml:8:11"  # the mapping that contains itself
