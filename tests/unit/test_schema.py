"""JSON Schema and manifest reference: valid schema, agrees with the loader, committed docs are current."""

from __future__ import annotations

import io

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from edgectl.load import load_text
from edgectl.schema import EXAMPLES, REGENERATE, generated_files, json_schema, manifest_reference_markdown
from edgectl.spec import KINDS


def yaml_data(text: str) -> dict:
    return YAML(typ="safe", pure=True).load(io.StringIO(text))


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json_schema()
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("kind", list(KINDS))
def test_examples_pass_both_the_schema_and_the_loader(kind: str, validator: Draft202012Validator) -> None:
    text = EXAMPLES[kind]
    assert list(validator.iter_errors(yaml_data(text))) == []
    [doc] = load_text(text, filename=f"example-{kind}.yaml")
    assert type(doc) is KINDS[kind]


@pytest.mark.parametrize("change, where", [
    (lambda d: d["spec"].update(memry_gb=8), "memry_gb"),                         # unknown key
    (lambda d: d.update(kind="Fleeet"), "Fleeet"),                                 # unknown kind
    (lambda d: d.update(apiVersion="edgectl.dev/v1"), "edgectl.dev/v1"),          # wrong apiVersion
    (lambda d: d["metadata"].update(name="-rf"), "-rf"),                           # bad name
    (lambda d: d["metadata"].update(labels={"bad key": "x"}), "bad key"),          # bad label key
    (lambda d: d["spec"].pop("disk_gb"), "disk_gb"),                               # missing field
    (lambda d: d["spec"]["cpu"].update(cores="four"), "four"),                    # wrong type
])
def test_schema_rejects_bad_documents(change, where: str, validator: Draft202012Validator) -> None:
    data = yaml_data(EXAMPLES["DeviceProfile"])
    change(data)
    errors = list(validator.iter_errors(data))
    assert errors, "the schema accepted an invalid document"
    assert any(where in e.message or where in str(list(e.path)) for e in errors)


def test_schema_selects_the_kind_of_the_document(validator: Draft202012Validator) -> None:
    fleet = yaml_data(EXAMPLES["Fleet"])
    fleet["spec"]["devices"][0]["transport"]["type"] = "telnet"
    assert list(validator.iter_errors(fleet))
    # A valid Fleet body under kind: Deployment is rejected (no silent match against another kind).
    fleet = yaml_data(EXAMPLES["Fleet"])
    fleet["kind"] = "Deployment"
    assert list(validator.iter_errors(fleet))


def test_reference_covers_every_kind_and_field() -> None:
    text = manifest_reference_markdown()
    assert text == manifest_reference_markdown()  # deterministic
    for kind in KINDS:
        assert f"\n## {kind}\n" in text
    for path in ("`spec.devices[].transport.host`", "`spec.devices[].overrides.memory_gb`",
                 "`spec.architecture.kv_heads`", "`spec.sources[].sha256`", "`spec.selector.labels`",
                 "`spec.accelerators[].tops`"):
        assert path in text


def test_committed_docs_are_current() -> None:
    for path, text in generated_files().items():
        assert path.is_file(), f"{path} is missing; run: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"{path} is out of date; run: {REGENERATE}"
