"""Several golden prompts per model, and the JSON Schema check: the schema is checked when the manifest loads (with
file:line), the gate asks every prompt in order (the first with the gate's time limits), and an answer misses when
it is not JSON valid against the schema (a ```json fenced block counts). The real gate with a real agent and
SmolLM2: tests/integration/test_golden_prompts_local.py."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from edgectl.apply.rollout import answer_problems, gate_as_data, gate_from_data, gate_problems, json_schema_miss
from edgectl.agent_client import SmokeResult
from edgectl.errors import SpecErrors
from edgectl.load import load_text
from edgectl.spec.deployment import HealthGate, gates_for
from edgectl.spec.model import GoldenPrompt

CAPITAL = GoldenPrompt(prompt="What is the capital of France? Answer in one word.", expect_contains="Paris")
PERSON = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}
AS_JSON = GoldenPrompt(prompt="Give Ada, 36, as JSON with name and age.", max_tokens=64, expect_json_schema=PERSON)

MODEL = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: m}}
spec:
  architecture: {{family: llama, parameters: 1000, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
{goldens}
"""


def test_golden_prompts_load_as_a_list_and_golden_prompt_still_works() -> None:
    (many,) = load_text(MODEL.format(goldens="""\
  golden_prompts:
    - {prompt: "What is the capital of France?", expect_contains: Paris}
    - prompt: "Give Ada, 36, as JSON."
      expect_json_schema: {type: object, required: [name, age]}
"""), "m.yaml")
    assert [g.prompt for g in many.spec.goldens] == ["What is the capital of France?", "Give Ada, 36, as JSON."]
    assert many.spec.goldens[1].expect_json_schema == {"type": "object", "required": ["name", "age"]}
    (one,) = load_text(MODEL.format(goldens='  golden_prompt: {prompt: "Hi?", expect_contains: hi}'), "m.yaml")
    assert [g.prompt for g in one.spec.goldens] == ["Hi?"]


def test_a_bad_schema_or_both_fields_fail_at_load_with_file_and_line() -> None:
    with pytest.raises(SpecErrors) as e:
        load_text(MODEL.format(goldens="""\
  golden_prompts:
    - {prompt: "Hi?", expect_contains: hi}
    - prompt: "Give JSON."
      expect_json_schema: {type: object, required: name}
"""), "m.yaml")
    assert "m.yaml:9:" in str(e.value) and "spec.golden_prompts[1]" in str(e.value)
    assert "not a valid JSON Schema: at required: 'name' is not of type 'array'" in str(e.value)
    with pytest.raises(SpecErrors, match="golden_prompts .a list. or golden_prompt .one., not both"):
        load_text(MODEL.format(goldens="""\
  golden_prompt: {prompt: "Hi?", expect_contains: hi}
  golden_prompts: [{prompt: "Hi?", expect_contains: hi}]
"""), "m.yaml")
    with pytest.raises(ValidationError, match="template"):
        GoldenPrompt(prompt="Hi", expect_json_schema={"const": "{{ x }}"})
    with pytest.raises(ValidationError, match="not a valid JSON Schema"):
        HealthGate(expect_json_schema={"type": 5})
    GoldenPrompt(prompt="Hi", expect_json_schema={"type": "object"})  # a schema alone is a check


def test_the_gate_asks_every_golden_prompt_the_first_with_its_limits() -> None:
    limits = HealthGate(max_ttft_ms=500, min_tokens_per_s=2)
    first, second = gates_for(limits, [CAPITAL, AS_JSON])
    assert (first.prompt, first.expect_contains, first.max_ttft_ms, first.max_tokens) == (CAPITAL.prompt, "Paris",
                                                                                          500, 24)
    assert (second.prompt, second.expect_json_schema, second.max_ttft_ms, second.min_tokens_per_s,
            second.max_tokens) == (AS_JSON.prompt, PERSON, None, None, 64)
    own = HealthGate(expect_json_schema={"type": "object"})  # the gate's own check: the model's prompts are not asked
    assert gates_for(own, [CAPITAL, AS_JSON]) == [own]
    assert gates_for(HealthGate(smoke=False), [CAPITAL, AS_JSON]) == [HealthGate(smoke=False)]


@pytest.mark.parametrize(("answer", "miss"), [
    ('{"name": "Ada", "age": 36}', None),
    ('Here it is:\n```json\n{"name": "Ada", "age": 36}\n```\nAnything else?', None),
    ('```\n{"name": "Ada", "age": 36}\n```', None),
    ('{"name": "Ada"}', "'age' is a required property"),
    ('{"name": "Ada", "age": -1}', "at age: -1 is less than the minimum of 0"),
    ("Ada is 36.", "not JSON (Expecting value: line 1 column 1 (char 0))"),
    ('```json\n{"name": "Ada", "age": 36\n```', "not JSON"),
    ('Here:\n```json\n{"name": "Ada", "age"', "not JSON (Expecting ':' delimiter"),  # cut off by max_tokens
])
def test_json_schema_check_reads_the_answer_or_its_fenced_block(answer: str, miss: str | None) -> None:
    got = json_schema_miss(PERSON, answer)
    assert got is None if miss is None else got.startswith(miss), got


def test_a_miss_names_the_prompt_the_check_and_the_answer() -> None:
    (gate,) = gates_for(HealthGate(), [AS_JSON])
    (problem,) = answer_problems(gate, '{"name": "Ada"}')
    assert problem == (f"the answer to {AS_JSON.prompt!r} fails expect_json_schema: 'age' is a required property: "
                       "'{\"name\": \"Ada\"}'")
    ok = SmokeResult(ttft_s=0.01, tokens=5, decode_s=0.1, text='{"name": "Ada", "age": 36}')
    assert gate_problems(gate, ok) == []


def test_the_ansible_role_gets_every_prompt_and_judges_their_answers_with_the_same_rule() -> None:
    import importlib.util
    from pathlib import Path

    gates = gates_for(HealthGate(min_tokens_per_s=1), [CAPITAL, AS_JSON])
    data = gate_as_data(gates, "llm")
    assert data["prompt"] == CAPITAL.prompt and data["min_tokens_per_s"] == 1
    (more,) = data["more"]
    assert json.loads(more["expect_json_schema"]) == PERSON and more["max_tokens"] == 64
    assert gate_from_data(data) == gates[0] and gate_from_data(more) == gates[1]
    assert "more" not in gate_as_data(gates, "tensor")

    plugin = Path(__file__).resolve().parents[2] / "deploy/ansible/filter_plugins/edgectl_gate.py"
    spec = importlib.util.spec_from_file_location("edgectl_gate_plugin", plugin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    judge = module.FilterModule().filters()["edgectl_answer_problems"]
    right = {"item": more, "json": {"choices": [{"message": {"content": '{"name": "Ada", "age": 36}'}}]}}
    wrong = {"item": more, "json": {"choices": [{"message": {"content": "Ada, 36"}}]}}
    assert judge([right]) == []
    (problem,) = judge([right, wrong])
    assert problem.startswith(f"the answer to {AS_JSON.prompt!r} fails expect_json_schema: not JSON")


def test_pull_devices_ask_every_prompt_and_edgectl_judges_the_reported_answers() -> None:
    from edgectl_agent.pull_report import report_text
    from edgectl_agent.pull_state import GateReport, GoldenAsk, PullStatus, SmokeRequest

    from edgectl.pull.rollout import judge
    from edgectl.pull.status import device_report
    from tests.unit.test_pull_rollout_rules import series_of

    # a state without extra prompts is the same document (and signature) as before SmokeRequest.more existed
    assert SmokeRequest(prompt="Hi").model_dump(mode="json") == {"kind": "llm", "prompt": "Hi", "max_tokens": 8}
    assert SmokeRequest(prompt="Hi", more=[GoldenAsk(prompt="JSON?")]).model_dump(mode="json")["more"] == [
        {"prompt": "JSON?", "max_tokens": 24}]

    digest = "sha256:" + "ab" * 32
    gates = gates_for(HealthGate(), [CAPITAL, AS_JSON])

    def reported(answers: list[str]):
        status = PullStatus(device="shop-1", outcome="applied", version=3, applied_version=3,
                            gates={"chat": GateReport(digest=digest, version=3, ttft_s=0.05, tokens=8, decode_s=0.1,
                                                      answer="Paris.", answers=answers)})
        return device_report(series_of(report_text(status, []), 1000.0))

    ok, detail = judge(reported(['```json\n{"name": "Ada", "age": 36}\n```']), "chat", 3, digest, gates)
    assert ok and detail.endswith("; 1 more golden prompts answered right"), detail
    ok, why = judge(reported(['{"name": "Ada"}']), "chat", 3, digest, gates)
    assert not ok and f"the answer to {AS_JSON.prompt!r} fails expect_json_schema: 'age' is a required" in why
    ok, why = judge(reported([]), "chat", 3, digest, gates)  # an older agent asks only the first prompt
    assert not ok and "reported 0 of 1 golden prompt answers" in why


def test_only_chat_models_carry_golden_prompts() -> None:
    with pytest.raises(SpecErrors, match="golden prompts are asked as chat completions, which a model of task 'embedding'"):
        load_text(MODEL.format(goldens="""\
  task: embedding
  golden_prompts: [{prompt: "Hi?", expect_contains: hi}]
"""), "m.yaml")
