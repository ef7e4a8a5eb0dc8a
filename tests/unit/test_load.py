"""Loader: one test per class of bad input, each asserting the exact file:line:column, field, message and hint."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import edgectl.load as load_mod
from edgectl.errors import SpecError, SpecErrors
from edgectl.load import builtin_catalog_dir, builtin_profiles_dir, load_paths, load_text
from edgectl.spec import Deployment, DeviceProfile, Fleet, Model

PROFILE = """\
apiVersion: edgectl.dev/v1alpha1
kind: DeviceProfile
metadata:
  name: {name}
spec:
  arch: aarch64
  cpu: {{model: Cortex-A76, cores: 4}}
  memory_gb: {memory_gb}
  os_reserved_gb: 1
  disk_gb: 32
  runtimes: [llamacpp]
  default_threads: 4
"""

MODEL = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata:
  name: {name}
spec:
  architecture: {{family: llama, parameters: 1000, layers: 2, hidden_size: 64, attention_heads: 4,
                 kv_heads: 4, head_dim: 16, vocab_size: 100, max_context: 512}}
  sources:
    - {{type: gguf, precision: F16, path: weights/tiny.gguf}}
"""

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata:
  name: lab
spec:
  devices:
    - name: pi
      profile: rpi5
      transport:
        type: ssh
        host: pi.local
"""

DEPLOYMENT = """\
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata:
  name: chat
spec:
  model: tiny
  selector:
    devices: [pi]
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative file names in messages: run every test inside its tmp_path."""
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return name


def errors_of(*paths: str, builtins: bool = False) -> list[str]:
    with pytest.raises(SpecErrors) as info:
        load_paths(list(paths), builtins=builtins)
    assert info.value.exit_code == 2
    return [str(e) for e in info.value.errors]


def valid_set() -> list[str]:
    return [write("profiles.yaml", PROFILE.format(name="rpi5", memory_gb=8)),
            write("model.yaml", MODEL.format(name="tiny")),
            write("fleet.yaml", FLEET), write("deploy.yaml", DEPLOYMENT)]


def test_valid_set_loads_with_sources() -> None:
    spec = load_paths(valid_set(), builtins=False)
    assert set(spec.profiles) == {"rpi5"} and set(spec.models) == {"tiny"}
    assert set(spec.devices) == {"pi"} and set(spec.deployments) == {"chat"}
    assert spec.sources[("Fleet", "lab")] == "fleet.yaml:1"
    assert spec.sources[("Deployment", "chat")] == "deploy.yaml:1"


def test_unknown_key_suggests_close_match() -> None:
    write("fleet.yaml", FLEET + "      overrides:\n        memry_gb: 4\n")
    assert errors_of("fleet.yaml") == [
        "fleet.yaml:13:9: spec.devices[0].overrides.memry_gb: unknown field\n  hint: did you mean 'memory_gb'?"]


def test_unknown_key_belonging_one_level_down_says_where() -> None:
    write("fleet.yaml", FLEET + "      memory_gb: 4\n")
    assert errors_of("fleet.yaml") == [
        "fleet.yaml:12:7: spec.devices[0].memory_gb: unknown field\n"
        "  hint: did you mean 'overrides.memory_gb' (it belongs under 'overrides')?"]


def test_unknown_key_without_close_match_lists_allowed_keys() -> None:
    write("deploy.yaml", DEPLOYMENT + "  zebra: blue\n")
    [err] = errors_of("deploy.yaml")
    assert err.startswith("deploy.yaml:9:3: spec.zebra: unknown field\n  hint: allowed keys here: context_length, model,")


def test_wrong_type_points_at_the_value() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb="lots"))
    assert errors_of("p.yaml") == [
        "p.yaml:8:14: spec.memory_gb: expected a number, got 'lots' (a string)\n"
        "  hint: write a number here - Total RAM in GB of 2^30 bytes, as RAM is sold (unified memory on Apple Silicon and Jetson)"]


def test_number_out_of_range() -> None:
    write("deploy.yaml", DEPLOYMENT + "  parallel: 0\n")
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:9:13: spec.parallel: must be >= 1, got 0\n"
        "  hint: use a value >= 1 - Concurrent request slots (each gets its own KV cache)"]


def test_missing_field_points_at_the_parent_mapping() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=8).replace("  disk_gb: 32\n", ""))
    assert errors_of("p.yaml") == [
        "p.yaml:6:3: spec.disk_gb: missing required field\n"
        "  hint: add 'disk_gb:' here - Storage available for the agent's artifact store, in GB of 2^30 bytes"]


def test_missing_transport_type_lists_types() -> None:
    write("fleet.yaml", FLEET.replace("        type: ssh\n", ""))
    assert errors_of("fleet.yaml") == [
        "fleet.yaml:10:9: spec.devices[0].transport.type: missing 'type'\n  hint: add 'type:' here, one of: local, ssh, docker, pull"]


def test_unknown_transport_type_suggests() -> None:
    write("fleet.yaml", FLEET.replace("type: ssh", "type: shh"))
    assert errors_of("fleet.yaml") == [
        "fleet.yaml:10:15: spec.devices[0].transport.type: unknown type 'shh'\n"
        "  hint: did you mean 'ssh'? known types: local, ssh, docker, pull"]


def test_literal_value_suggests() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=8).replace("[llamacpp]", "[llama.cpp]"))
    [err] = errors_of("p.yaml")
    assert err.startswith("p.yaml:11:14: spec.runtimes[0]: unsupported value 'llama.cpp'\n"
                          "  hint: did you mean 'llamacpp'? allowed values: llamacpp, ")


def test_validator_message_is_kept() -> None:
    write("deploy.yaml", DEPLOYMENT.replace("    devices: [pi]\n", "    devices: []\n"))
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:8:5: spec.selector: a selector needs 'devices' or 'labels' (an empty selector would match nothing)\n"
        "  hint: add 'devices: [name, ...]' or 'labels: {key: value}' under selector"]


def test_quant_type_the_format_does_not_build_lists_the_valid_ones() -> None:
    write("deploy.yaml", DEPLOYMENT + "  quantization:\n    format: openvino\n    allow: [INT4, Q4_K_M]\n")
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:11:12: spec.quantization.allow: Q4_K_M: not a quant type edgectl builds for the openvino format; "
        "valid: FP16, FP32, INT4, INT4_SYM_CW, INT8\n"
        "  hint: use one of the valid names (case matters), or change or remove quantization.format"]
    write("deploy.yaml", DEPLOYMENT + "  quantization:\n    allow: [Q4_K_X]\n")
    [err] = errors_of("deploy.yaml")
    assert "Q4_K_X: not a quant type edgectl builds for any format; valid: " in err and "Q4_K_M" in err


def test_duplicate_yaml_key_reports_the_second_occurrence() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=8) + "  memory_gb: 16\n")
    assert errors_of("p.yaml") == [
        "p.yaml:13:3: spec.memory_gb: duplicate key 'memory_gb'\n"
        "  hint: it is already set at line 8, column 3; keep one of them"]


def test_duplicate_names_across_files_name_both_locations() -> None:
    write("a.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    write("sub/b.yaml", PROFILE.format(name="rpi5", memory_gb=4))
    assert errors_of("a.yaml", "sub/b.yaml") == [
        "sub/b.yaml:4:9: metadata.name: duplicate DeviceProfile name 'rpi5'\n"
        "  hint: 'rpi5' is already defined at a.yaml:4:9; rename or remove one"]


def test_duplicate_device_names_across_fleets() -> None:
    write("f1.yaml", FLEET)
    write("f2.yaml", FLEET.replace("name: lab", "name: lab2"))
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    assert errors_of("p.yaml", "f1.yaml", "f2.yaml") == [
        "f2.yaml:7:13: spec.devices[0].name: duplicate device name 'pi'\n"
        "  hint: 'pi' is already a device at f1.yaml:7:13; device names must be unique across fleets"]


def test_unknown_profile_lists_known_ones_close_first() -> None:
    write("p.yaml", PROFILE.format(name="jetson", memory_gb=8) + "---\n" + PROFILE.format(name="rpi5-8gb", memory_gb=8))
    write("fleet.yaml", FLEET)
    assert errors_of("p.yaml", "fleet.yaml") == [
        "fleet.yaml:8:16: spec.devices[0].profile: unknown device profile 'rpi5'\n"
        "  hint: use 'auto' or a DeviceProfile name; did you mean 'rpi5-8gb'? known: rpi5-8gb, jetson"]


def test_auto_profile_needs_no_definition() -> None:
    write("fleet.yaml", FLEET.replace("profile: rpi5", "profile: auto"))
    assert set(load_paths(["fleet.yaml"], builtins=False).devices) == {"pi"}


def test_unknown_model_and_device_list_known_ones() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    write("m.yaml", MODEL.format(name="tiny-llama"))
    write("fleet.yaml", FLEET)
    write("deploy.yaml", DEPLOYMENT.replace("model: tiny", "model: tinyllama").replace("[pi]", "[pi, p1]"))
    assert errors_of("p.yaml", "m.yaml", "fleet.yaml", "deploy.yaml") == [
        "deploy.yaml:6:10: spec.model: unknown model 'tinyllama'\n"
        "  hint: define it in a Model document or use a catalog model; did you mean 'tiny-llama'? known: tiny-llama",
        "deploy.yaml:8:19: spec.selector.devices[1]: unknown device 'p1'\n"
        "  hint: add it to a Fleet document, or fix the name; did you mean 'pi'? known: pi"]


@pytest.mark.parametrize("bad", ['"pi;rm -rf /"', "-pi", "Pi", "a/b"])
def test_bad_names_explain_the_charset(bad: str) -> None:
    write("fleet.yaml", FLEET.replace("- name: pi", f"- name: {bad}"))
    [err] = errors_of("fleet.yaml")
    shown = bad.strip('"')
    assert err.startswith(f"fleet.yaml:7:13: spec.devices[0].name: invalid name '{shown}'\n"
                          "  hint: use lowercase letters, digits, '.', '_' and '-'; starting and ending with a letter")
    assert "leading '-'" in err


def test_bad_api_version() -> None:
    write("deploy.yaml", DEPLOYMENT.replace("edgectl.dev/v1alpha1", "edgectl.dev/v1"))
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:1:13: apiVersion: unsupported apiVersion 'edgectl.dev/v1'\n"
        "  hint: use 'apiVersion: edgectl.dev/v1alpha1'"]


def test_missing_api_version() -> None:
    write("deploy.yaml", DEPLOYMENT.replace("apiVersion: edgectl.dev/v1alpha1\n", ""))
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:1:1: apiVersion: missing required field\n"
        "  hint: add 'apiVersion: edgectl.dev/v1alpha1' at the top of the document"]


def test_unknown_kind_lists_kinds() -> None:
    write("deploy.yaml", DEPLOYMENT.replace("kind: Deployment", "kind: deployment"))
    assert errors_of("deploy.yaml") == [
        "deploy.yaml:2:7: kind: unknown kind 'deployment'\n"
        "  hint: did you mean 'Deployment'? known kinds: DeviceProfile, Fleet, Model, Deployment"]


def test_multi_document_file_and_all_errors_at_once() -> None:
    write("all.yaml", "---\n" + PROFILE.format(name="rpi5", memory_gb=8) + "---\n" + MODEL.format(name="tiny")
          + "---\n" + FLEET + "---\n" + DEPLOYMENT + "---\n")
    spec = load_paths(["all.yaml"], builtins=False)
    assert spec.sources[("Model", "tiny")] == "all.yaml:15"
    # Two broken documents in two files: every error is reported, sorted by file and position.
    write("bad1.yaml", FLEET.replace("host: pi.local", "host: 'pi local'") + "---\n"
          + DEPLOYMENT.replace("model: tiny", "model: 7"))
    write("bad2.yaml", PROFILE.format(name="x", memory_gb=-1))
    errs = errors_of("bad2.yaml", "bad1.yaml")
    assert [e.split(": ")[0] for e in errs] == ["bad1.yaml:11:15", "bad1.yaml:18:10", "bad2.yaml:8:14"]


def test_directory_is_loaded_recursively_and_sorted(tmp_path: Path) -> None:
    write("m/b/fleet.yml", FLEET)
    write("m/a/profile.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    write("m/model.yaml", MODEL.format(name="tiny"))
    write("m/deploy.yaml", DEPLOYMENT)
    write("m/notes.txt", "not yaml")
    spec = load_paths(["m"], builtins=False)
    assert list(spec.sources) == [("DeviceProfile", "rpi5"), ("Fleet", "lab"), ("Deployment", "chat"), ("Model", "tiny")]
    assert spec.sources[("Fleet", "lab")] == str(Path("m/b/fleet.yml")) + ":1"


def test_model_source_path_is_relative_to_the_manifest() -> None:
    write("m/model.yaml", MODEL.format(name="tiny"))
    spec = load_paths(["m/model.yaml"], builtins=False)
    assert spec.models["tiny"].spec.sources[0].path == str(Path("m/weights/tiny.gguf").absolute())


def test_missing_path_empty_file_non_mapping_and_syntax_error() -> None:
    write("empty.yaml", "# only a comment\n")
    write("list.yaml", "- a\n- b\n")
    write("broken.yaml", "kind: Fleet\nmetadata: {name: x\n")
    write("emptydir/readme.md", "x")
    errs = errors_of("nope.yaml", "empty.yaml", "list.yaml", "broken.yaml", "emptydir")
    assert "'nope.yaml' does not exist\n  hint: check the path" in errs[0]
    assert any(e.startswith("directory 'emptydir' holds no *.yaml or *.yml files") for e in errs)
    assert any(e.startswith("empty.yaml: no documents in this file\n  hint: add a document") for e in errs)
    assert ("list.yaml:1:1: a document must be a mapping (apiVersion, kind, metadata, spec), got a list\n"
            "  hint: start the document with 'apiVersion: edgectl.dev/v1alpha1' and 'kind: ...'") in errs
    assert any(e.startswith("broken.yaml:3:1: invalid YAML:") for e in errs)


def test_user_document_overrides_builtin(monkeypatch: pytest.MonkeyPatch) -> None:
    write("builtin/profiles/rpi5.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    write("builtin/catalog/tiny.yaml", MODEL.format(name="tiny"))
    monkeypatch.setattr(load_mod, "builtin_profiles_dir", lambda: Path("builtin/profiles").absolute())
    monkeypatch.setattr(load_mod, "builtin_catalog_dir", lambda: Path("builtin/catalog").absolute())
    write("mine.yaml", PROFILE.format(name="rpi5", memory_gb=4))
    write("fleet.yaml", FLEET)
    write("deploy.yaml", DEPLOYMENT)
    spec = load_paths(["mine.yaml", "fleet.yaml", "deploy.yaml"])
    assert spec.profiles["rpi5"].spec.memory_gb == 4
    assert spec.sources[("DeviceProfile", "rpi5")] == "mine.yaml:1"
    assert "tiny" in spec.models  # the built-in catalog resolves the deployment's model
    if hasattr(spec, "overrides"):
        assert ("DeviceProfile", "rpi5") in spec.overrides
    # Overriding twice from user files is still a duplicate.
    write("mine2.yaml", PROFILE.format(name="rpi5", memory_gb=2))
    with pytest.raises(SpecErrors, match="duplicate DeviceProfile name 'rpi5'"):
        load_paths(["mine.yaml", "mine2.yaml"])


def test_shipped_builtins_are_valid() -> None:
    """The real built-in profiles and catalog load cleanly (whatever is there now)."""
    write("p.yaml", PROFILE.format(name="zz-test-only", memory_gb=8))
    spec = load_paths(["p.yaml"])
    n_profiles = len(list(builtin_profiles_dir().glob("*.y*ml"))) if builtin_profiles_dir().is_dir() else 0
    assert len(spec.profiles) >= 1 + (1 if n_profiles else 0)
    if builtin_catalog_dir().is_dir() and any(builtin_catalog_dir().glob("*.y*ml")):
        assert spec.models


def test_load_text_returns_validated_documents() -> None:
    docs = load_text(PROFILE.format(name="rpi5", memory_gb=8) + "---\n" + MODEL.format(name="tiny")
                     + "---\n" + FLEET + "---\n" + DEPLOYMENT)
    assert [type(d) for d in docs] == [DeviceProfile, Model, Fleet, Deployment]
    with pytest.raises(SpecErrors) as info:
        load_text("apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\n", filename="x.yaml")
    assert [e.field for e in info.value.errors] == ["metadata", "spec"]
    assert all(isinstance(e, SpecError) and e.where == "x.yaml:1:1" for e in info.value.errors)


def test_a_broken_document_causes_no_knock_on_reference_errors() -> None:
    write("p.yaml", PROFILE.format(name="rpi5", memory_gb=0))       # invalid profile
    write("m.yaml", MODEL.format(name="tiny").replace("layers: 2", "layers: -2"))
    write("fleet.yaml", FLEET + "      colour: red\n")                 # invalid fleet: device 'pi' is broken
    write("deploy.yaml", DEPLOYMENT)
    errs = errors_of("p.yaml", "m.yaml", "fleet.yaml", "deploy.yaml")
    assert [e.split(": ")[0] for e in errs] == ["fleet.yaml:12:7", "m.yaml:6:59", "p.yaml:8:14"]


def test_a_file_named_twice_or_inside_a_named_directory_is_read_once() -> None:
    files = valid_set()
    write("m/extra.yaml", PROFILE.format(name="jetson", memory_gb=8))
    spec = load_paths([*files, "fleet.yaml", "m", "m/extra.yaml"], builtins=False)
    assert set(spec.profiles) == {"rpi5", "jetson"}


def test_hidden_directories_are_skipped() -> None:
    write("m/.venv/lib/site.yaml", "not: a manifest\n")
    write("m/p.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    assert set(load_paths(["m"], builtins=False).profiles) == {"rpi5"}


def test_bad_label_key_points_at_the_key() -> None:
    write("fleet.yaml", FLEET.replace("      profile: rpi5\n", "      profile: auto\n      labels: {'my room': x}\n"))
    assert errors_of("fleet.yaml") == [
        "fleet.yaml:9:16: spec.devices[0].labels['my room']: invalid label key 'my room'\n"
        "  hint: use letters, digits, '.', '_', '/' and '-'; starting and ending with a letter or digit; "
        "at most 63 characters"]


def test_yaml_tabs_tags_and_recursive_aliases_are_errors_not_crashes() -> None:
    write("tab.yaml", "apiVersion: edgectl.dev/v1alpha1\n\tkind: Fleet\n")
    write("tag.yaml", "apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: !!python/object:os.system {}\n")
    write("loop.yaml", FLEET.replace("  devices:\n", "  devices: &d [*d]\n  x:\n"))
    errs = errors_of("tab.yaml", "tag.yaml", "loop.yaml")
    assert any(e.startswith("tab.yaml:2:1: invalid YAML:") and "hint: indent with spaces" in e for e in errs)
    assert any(e.startswith("tag.yaml:3:11: invalid YAML:") and "hint: remove the '!' tag" in e for e in errs)
    assert any(e.startswith("loop.yaml:") for e in errs)


@pytest.mark.parametrize("field, bad, what", [
    ("host", '"-oProxyCommand=touch x"', "host"),
    ("host", '"pi.local;reboot"', "host"),
    ("user", '"-lroot"', "name"),
    ("user", '"pi$(id)"', "name"),
    ("proxy_jump", '"-J evil"', "jump host"),
    ("proxy_jump", '"bastion`id`"', "jump host"),
    ("agent_dir", '"/opt/agent; rm -rf /"', "device path"),
    ("agent_dir", '"relative/dir"', "device path"),
    ("python", '"-c import os"', "program"),
])
def test_ssh_values_that_would_reach_a_shell_or_an_option_are_rejected(field: str, bad: str, what: str) -> None:
    text = FLEET if field == "host" else FLEET.replace("        host: pi.local\n",
                                                       f"        host: pi.local\n        {field}: x\n")
    text = text.replace("host: pi.local", f"host: {bad}") if field == "host" else text.replace(f"{field}: x",
                                                                                                 f"{field}: {bad}")
    write("fleet.yaml", text)
    [err] = errors_of("fleet.yaml")
    assert f"spec.devices[0].transport.{field}: invalid {what} '{bad.strip(chr(34))}'" in err
    assert "hint: use " in err


@pytest.mark.parametrize("bad", ['"-x"', '"a;b"', '"$(id)"', '"a b"'])
def test_label_values_with_shell_characters_or_a_leading_dash_are_rejected(bad: str) -> None:
    write("fleet.yaml", FLEET + "      labels: {site: " + bad + "}\n")
    [err] = errors_of("fleet.yaml")
    assert "spec.devices[0].labels.site: invalid label" in err


def test_ssh_transport_fields_load() -> None:
    write("fleet.yaml", FLEET.replace("        host: pi.local\n", "        host: 127.0.0.1\n        user: edge\n"
                                      "        port: 2222\n        proxy_jump: ops@bastion.lan:2200\n"
                                      "        agent_dir: /opt/edgectl-agent\n        python: /usr/bin/python3.11\n"))
    write("profiles.yaml", PROFILE.format(name="rpi5", memory_gb=8))
    [fleet] = load_paths(["profiles.yaml", "fleet.yaml"], builtins=False).fleets.values()
    t = fleet.spec.devices[0].transport
    assert (t.host, t.user, t.port, t.proxy_jump, t.agent_dir, t.python) == (
        "127.0.0.1", "edge", 2222, "ops@bastion.lan:2200", "/opt/edgectl-agent", "/usr/bin/python3.11")
