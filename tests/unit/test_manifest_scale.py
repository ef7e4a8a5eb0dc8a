"""Large manifests: a 10,000-device Fleet loads on the fast path (libyaml events); the alias guard refuses alias
bombs, and only those, on both readers; the fast reader means what ruamel.yaml means."""

from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

import edgectl.load as load_mod
import edgectl.yaml_bounds as bounds
from edgectl.errors import SpecErrors
from edgectl.load import load_paths, load_text
from edgectl.yaml_events import BoundsError, NeedsFullComposer, read_documents

ROOT = Path(__file__).resolve().parents[2]
HEAD = "apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata:\n  name: big\nspec:\n  devices:\n"


def address(i: int) -> str:
    return f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"


def device(i: int) -> str:
    return (f"    - name: d{i:05d}\n      profile: raspberry-pi-5\n      transport:\n        type: ssh\n"
            f"        host: {address(i)}\n        user: pi\n"
            f"      labels:\n        site: s{i % 20}\n")


def big_fleet(n: int) -> str:
    return HEAD + "".join(device(i) for i in range(n))


@contextmanager
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


def billion_laughs(levels: int = 9) -> str:
    return HEAD.replace("  devices:\n", "") + "  devices:\n    - name: a\n      profile: raspberry-pi-5\n" \
        "      transport: {type: local}\n      labels:\n" + "        l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"        l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, levels))


def test_a_10000_device_fleet_loads_on_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was refused after 12.6 s ('expand this value to more than 100000 values') though it holds no alias."""
    (tmp_path / "fleet.yaml").write_text(big_fleet(10_000))

    def full_path(*args, **kwargs):
        raise AssertionError("a plain fleet must not need ruamel.yaml's composer")

    monkeypatch.setattr(load_mod, "_parse_and_validate_composed", full_path)
    started = time.process_time()
    spec = load_paths([tmp_path])
    spent = time.process_time() - started
    assert len(spec.fleets["big"].spec.devices) == 10_000
    d = spec.devices["d09999"]
    assert (d.transport.host, d.transport.user, d.labels) == ("10.0.39.15", "pi", {"site": "s19"})
    assert spent < 20, spent  # ~1 s of CPU here; ruamel.yaml's composer alone took 14 s


def test_an_error_in_a_large_fleet_keeps_its_line_and_column(tmp_path: Path) -> None:
    text = big_fleet(3000).replace(f"host: {address(2999)}\n", "host: pi;reboot\n")
    (tmp_path / "fleet.yaml").write_text(text)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "pi;reboot" in t)
    with pytest.raises(SpecErrors) as e:
        load_paths([tmp_path])
    [err] = e.value.errors
    assert err.where == f"{tmp_path / 'fleet.yaml'}:{line}:15" and err.field == "spec.devices[2999].transport.host"
    assert "invalid host 'pi;reboot'" in err.message and err.hint.startswith("use a host name or IP address")


@pytest.mark.parametrize("levels", [9, 6])
def test_billion_laughs_is_refused_quickly_with_a_place_and_a_fix(levels: int) -> None:
    """10**9 and 10**6 values: both refused at l4, the first level past 100,000 (line 15)."""
    with pytest.raises(SpecErrors) as e, alarm(10):
        load_text(billion_laughs(levels), "bomb.yaml")
    [err] = e.value.errors
    assert err.where == "bomb.yaml:15:13", str(err)
    assert "expand this value to more than 100000 values beyond the" in err.message
    assert "fewer aliases" in err.hint


def test_nested_mapping_aliases_are_refused_too() -> None:
    """Aliases of mappings of aliases (not lists): the same multiplication."""
    lines = ["      runtime_options:", "        m0: &m0 {a: x, b: x, c: x, d: x, e: x, f: x, g: x, h: x, i: x, j: x}"]
    lines += [f"        m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i - 1}" for j in range(10)) + "}" for i in range(1, 8)]
    text = ("apiVersion: edgectl.dev/v1alpha1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n  model: tiny\n"
            "  selector: {devices: [pi]}\n" + "\n".join(lines).replace("      runtime_options", "  runtime_options")
            .replace("\n        ", "\n    ") + "\n")
    with pytest.raises(SpecErrors) as e, alarm(10):
        load_text(text, "nested.yaml")
    [err] = e.value.errors
    assert "YAML aliases (*name) expand this value" in err.message and err.where.startswith("nested.yaml:12:")


def test_aliases_that_add_fewer_values_than_the_bound_load_in_a_large_fleet(tmp_path: Path) -> None:
    """10,000 devices sharing one transport by alias (&t): 40,000 values added by aliases, under 100,000."""
    text = HEAD + "    - name: d00000\n      profile: raspberry-pi-5\n      transport: &t {type: ssh, host: h, user: pi}\n"
    text += "".join(f"    - {{name: d{i:05d}, profile: raspberry-pi-5, transport: *t}}\n" for i in range(1, 10_000))
    (tmp_path / "fleet.yaml").write_text(text)
    spec = load_paths([tmp_path])
    assert spec.devices["d09999"].transport.host == "h"


@pytest.mark.parametrize("reader", ["fast", "full"])
def test_only_values_added_by_aliases_count(reader: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the bound at 10: 50 written values pass on both readers; 3 aliases of a 10-value list (30 added) fail."""
    monkeypatch.setattr(bounds, "MAX_ALIAS_EXPANSION", 10)
    plain = "a: [" + ", ".join(["x"] * 50) + "]\n"
    bomb = "a: &a [" + ", ".join(["x"] * 9) + "]\nb: [*a, *a, *a]\n"
    if reader == "fast":
        assert read_documents(plain, "p.yaml")[0].data["a"] == ["x"] * 50
        with pytest.raises(BoundsError) as e:
            read_documents(bomb, "b.yaml")
        assert e.value.error.where == "b.yaml:2:4"
    else:
        assert bounds.shape_error(YAML(typ="safe", pure=True).compose(plain), "p.yaml") is None
        err = bounds.shape_error(YAML(typ="safe", pure=True).compose(bomb), "b.yaml")
        assert err is not None and err.where == "b.yaml:2:4"


SCALARS = ("[yes, no, on, off, y, n, 2024-01-01, 2024-01-01T10:00:00Z, 0o17, 017, 0x1F, 0b101, 1_000, 1:20, .5, "
           "-1, +1, 1e3, 1.5e-3, .inf, -.inf, .NaN, ~, null, Null, NULL, '', true, True, FALSE, '017', \"1\", "
           "10.0.0.1, 1.0.0, <x, x y, 'a: b', |, -x]")


@pytest.mark.parametrize("text", [
    "a: " + SCALARS.replace("|, ", "") + "\n",
    "k: {1: one, 2.5: two, false: three, null: four, '1': five}\n",
    "a: |\n  block\n  text\nb: >\n  folded\n  text\nc: &x [1, {d: 2}]\nd: *x\n",
    "",
    "---\na: 1\n---\n---\nb: 2\n",
])
def test_the_fast_reader_means_what_ruamel_yaml_means(text: str) -> None:
    fast = [d.data for d in read_documents(text, "t.yaml")]
    full = list(YAML(typ="safe", pure=True).load_all(text))
    assert repr(fast) == repr(full)


@pytest.mark.parametrize("path", sorted((ROOT / "manifests").rglob("*.yaml")) + sorted((ROOT / "profiles").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_the_fast_reader_reads_the_shipped_manifests_as_ruamel_yaml_does(path: Path) -> None:
    text = path.read_text()
    try:
        fast = [d.data for d in read_documents(text, str(path))]
    except NeedsFullComposer:
        return  # a construct left to ruamel.yaml: it reads it, as before
    assert repr(fast) == repr(list(YAML(typ="safe", pure=True).load_all(text)))


@pytest.mark.parametrize("text, why", [
    ("a: !!str 1\n", "a tag"), ("a: &x {b: 1}\nc: {<<: *x}\n", "a merge key"), ("a: 1\na: 2\n", "duplicate key"),
    ("%YAML 1.1\n---\na: yes\n", "directive"), ("a: *nothing\n", "undefined alias"), ("a: [1\n", "syntax error"),
    ("[1, 2]\n", "not a mapping"), ("? [a]\n: b\n", "not a scalar"), ("a:\tb\n", "a tab"),
    ("a: 1\x85b: 2\n", "line break"), ("a: 1\n...\n", "'...' line"), ("&a: b\n", "odd anchor"),
])
def test_the_fast_reader_leaves_other_constructs_to_ruamel_yaml(text: str, why: str) -> None:
    with pytest.raises(NeedsFullComposer, match=why):
        read_documents(text, "t.yaml")


PIECES = [*":-[]{}!&*#|>'\"%@`,?.~=\\/ \n\t", "\n  ", "\n- ", ": ", "---\n", "...\n", "\u00e9", "\ufeff", "\x85",
          "\u2028", "a", "b", "1", "yes", "0x1", "1e3", "null", "&a ", "*a", "<<"]


@pytest.mark.filterwarnings("ignore::ruamel.yaml.error.ReusedAnchorWarning")
@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True)
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_what_the_fast_reader_reads_ruamel_yaml_reads_the_same(text: str) -> None:
    """Differential: 30,000 examples of this found the cases it now leaves to ruamel (tabs, NEL, '...', anchors)."""
    try:
        fast = [d.data for d in read_documents(text, "t.yaml")]
    except (NeedsFullComposer, BoundsError):
        return
    assert repr(fast) == repr(list(YAML(typ="safe", pure=True).load_all(text))), text
