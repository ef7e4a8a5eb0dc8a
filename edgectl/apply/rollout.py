"""The rollout rules, written once and used by both engines (edgectl's own and the Ansible one).

- :func:`waves`: which devices go together, in which order (all at once, rolling, or a canary first).
- :func:`unavailable_halt`: a rollout with more unreachable devices than ``max_unavailable`` changes nothing.
- :func:`allowed_failures` and :class:`Halting`: after each wave, the devices failed so far against what
  ``max_failure`` allows of those tried so far; past it the wave is rolled back and later waves are not started.
  The Ansible engine hands ``allowed_failures`` to the playbook as data (one number per host) and reads its outcome
  back through :class:`Halting`, so both engines halt, and say why, in the same words.
- :func:`gate_problems` and :func:`gate_detail`: what fails the health gate in the agent's own timings of the smoke
  request and in its answer (expect_contains / expect_regex / expect_json_schema: :func:`answer_problems`), and how
  a passed gate is reported. The Ansible role calls these same functions through its filter plugin
  (deploy/ansible/filter_plugins/edgectl_gate.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from edgectl.agent_client import SmokeResult
from edgectl.spec.deployment import HealthGate, Rollout, resolve_count


def waves(rollout: Rollout, devices: list[str]) -> list[list[str]]:
    """The rollout's waves over ``devices`` (in the given order): one for all-at-once; for canary the first
    ``canary`` devices alone, then waves of ``wave_size``; for rolling waves of ``wave_size``."""
    if rollout.strategy == "all-at-once" or not devices:
        return [devices] if devices else []
    size = resolve_count(rollout.wave_size, len(devices), at_least=1)
    head: list[list[str]] = []
    rest = devices
    if rollout.strategy == "canary":
        head, rest = [devices[:rollout.canary]], devices[rollout.canary:]
    return head + [rest[i:i + size] for i in range(0, len(rest), size)]


def is_canary(rollout: Rollout, index: int) -> bool:
    return rollout.strategy == "canary" and index == 0


def wave_label(rollout: Rollout, index: int, count: int) -> str:
    """'wave 2/3', 'wave 1/3 (canary)'."""
    return f"wave {index + 1}/{count}{' (canary)' if is_canary(rollout, index) else ''}"


def unavailable_halt(name: str, rollout: Rollout, targets: list[str], unreachable: list[str]) -> str | None:
    """Why the rollout of ``name`` must not start when ``unreachable`` of ``targets`` cannot be reached, or None."""
    if len(unreachable) <= resolve_count(rollout.max_unavailable, len(targets)):
        return None
    return (f"{name}: {len(unreachable)} of {len(targets)} devices unreachable ({', '.join(unreachable)}), more "
            f"than max_unavailable {rollout.max_unavailable}; no device was changed")


def allowed_failures(order: list[list[str]], max_failure: int | str,
                     resolve: Callable[[int | str, int], int] = resolve_count) -> list[int]:
    """Per wave of ``order``: the failures the rollout allows once that wave is done, counted over every device
    tried so far (a share is of those, not of the whole fleet)."""
    out, tried = [], 0
    for wave in order:
        tried += len(wave)
        out.append(resolve(max_failure, tried))
    return out


class Halting:
    """The halting rule over one rollout's waves: feed each wave's failures in order; the first wave that takes the
    failures past what is allowed halts the rollout, and :meth:`after_wave` says why."""

    def __init__(self, name: str, rollout: Rollout, order: list[list[str]]) -> None:
        self.name, self.rollout, self.order = name, rollout, order
        self.allowed = allowed_failures(order, rollout.max_failure)
        self.tried = self.failed = 0

    def after_wave(self, index: int, failed: int) -> str | None:
        """Count wave ``index`` (``failed`` of its devices failed); why the rollout halts there, or None."""
        self.tried += len(self.order[index])
        self.failed += failed
        if self.failed <= self.allowed[index]:
            return None
        later = self.later(index)
        return (f"{self.name}: {self.failed} of {self.tried} devices failed in wave {index + 1}"
                f"{' (canary)' if is_canary(self.rollout, index) else ''}, more than max_failure "
                f"{self.rollout.max_failure}; "
                + ("the wave was rolled back" if self.rollout.rollback else "rollback is off")
                + (f"; not started: {', '.join(later)}" if later else ""))

    def later(self, index: int) -> list[str]:
        """The devices of the waves after ``index``."""
        return [d for wave in self.order[index + 1:] for d in wave]

    def outcome(self) -> str:
        """The run record's word for a wave that did not halt the rollout."""
        return "ok" if self.failed == 0 else "ok-with-failures"


def gate_problems(gate: HealthGate, r: SmokeResult) -> list[str]:
    """What fails ``gate`` in the agent's own timings of the smoke request (empty: it passes)."""
    limits = gate.max_ttft_ms is not None or gate.min_tokens_per_s is not None
    if limits and r.tokens is None:
        return ["the agent reported no timings for the smoke request (an edgectl-agent older than this edgectl), "
                "so max_ttft_ms/min_tokens_per_s cannot be checked"] + answer_problems(gate, r.text)
    problems = []
    if gate.max_ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1000 > gate.max_ttft_ms):
        problems.append(f"time to first token {(r.ttft_s or 0) * 1000:.1f} ms > max_ttft_ms {gate.max_ttft_ms:g}")
    rate = r.tokens_per_s
    if gate.min_tokens_per_s is not None and (rate is None or rate < gate.min_tokens_per_s):
        problems.append(f"decode {rate or 0:.1f} tokens/s < min_tokens_per_s {gate.min_tokens_per_s:g}")
    return problems + answer_problems(gate, r.text)


def answer_problems(gate: HealthGate, text: str | None) -> list[str]:
    """What fails ``gate`` in the smoke answer's text (expect_contains, expect_regex, expect_json_schema), each
    naming the prompt, the check and the answer; empty: it passes."""
    if gate.expect_contains is None and gate.expect_regex is None and gate.expect_json_schema is None:
        return []
    answer = text or ""
    shown = repr(answer[:120] + ("..." if len(answer) > 120 else ""))
    problems = []
    if gate.expect_contains is not None and gate.expect_contains.lower() not in answer.lower():
        problems.append(f"the answer to {gate.prompt!r} does not contain {gate.expect_contains!r}: {shown}")
    if gate.expect_regex is not None and re.search(gate.expect_regex, answer) is None:
        problems.append(f"the answer to {gate.prompt!r} does not match expect_regex {gate.expect_regex!r}: {shown}")
    if gate.expect_json_schema is not None:
        why = json_schema_miss(gate.expect_json_schema, answer)
        if why:
            problems.append(f"the answer to {gate.prompt!r} fails expect_json_schema: {why}: {shown}")
    return problems


# a fenced block; one cut off by max_tokens runs to the end (then the JSON error says where it stops)
_JSON_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def json_schema_miss(schema: dict, answer: str) -> str | None:
    """Why ``answer`` (or its first ```json fenced block) is not JSON valid against ``schema``; None when it is."""
    import jsonschema

    fenced = _JSON_FENCE.search(answer)
    document = fenced.group(1) if fenced else answer
    try:
        value = json.loads(document.strip())
    except ValueError as e:
        return f"not JSON ({e})"
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    return f"{'at ' + where + ': ' if where else ''}{error.message}"


def gate_detail(r: SmokeResult, gate: HealthGate | None = None) -> str:
    """How a passed gate is reported: the agent's timings when it gave them, else 'ready'; and what the answer was
    checked for."""
    rate = r.tokens_per_s
    detail = (f"ttft {r.ttft_s * 1000:.0f} ms, {rate:.1f} tok/s as timed by the agent"
              if r.ttft_s is not None and rate else "ready")
    checked = [f"contains {gate.expect_contains!r}" if gate and gate.expect_contains else "",
               f"matches {gate.expect_regex!r}" if gate and gate.expect_regex else "",
               "is JSON valid against expect_json_schema" if gate and gate.expect_json_schema else ""]
    checked = [c for c in checked if c]
    return detail + (f"; answer {' and '.join(checked)}" if checked else "")


def gate_as_data(gate: HealthGate | list[HealthGate], kind: str) -> dict | None:
    """The gate as the Ansible role receives it (``edgectl_smoke``); None when no smoke request is sent. Of a list
    (edgectl.spec.deployment.gates_for), the first is the smoke request and the others its ``more`` prompts, each
    with its answer checks (the JSON Schema as JSON text: Ansible leaves a string alone)."""
    first, *more = gate if isinstance(gate, list) else [gate]
    if not first.smoke:
        return None
    data = {"kind": kind, "max_tokens": first.max_tokens, "min_tokens_per_s": first.min_tokens_per_s,
            "max_ttft_ms": first.max_ttft_ms, **_answer_data(first)}
    if more and kind == "llm":
        data["more"] = [{"max_tokens": g.max_tokens, **_answer_data(g)} for g in more]
    return data


def _answer_data(gate: HealthGate) -> dict:
    schema = gate.expect_json_schema
    return {"prompt": gate.prompt, "expect_contains": gate.expect_contains, "expect_regex": gate.expect_regex,
            "expect_json_schema": json.dumps(schema) if schema is not None else None}


def gate_from_data(smoke: dict) -> HealthGate:
    """The inverse of :func:`gate_as_data` for one request (the gate, or one of its ``more`` prompts): what the
    role's filter plugin judges with."""
    schema = smoke.get("expect_json_schema")
    return HealthGate(max_tokens=smoke["max_tokens"], min_tokens_per_s=smoke.get("min_tokens_per_s"),
                      max_ttft_ms=smoke.get("max_ttft_ms"), prompt=smoke.get("prompt") or "Say hello.",
                      expect_contains=smoke.get("expect_contains"), expect_regex=smoke.get("expect_regex"),
                      expect_json_schema=json.loads(schema) if isinstance(schema, str) else schema)


def smoke_from_timings(timings: dict | None, text: str | None = None) -> SmokeResult:
    """A SmokeResult from the ``timings`` object the agent streams with a smoke request (and the answer's text)."""
    timings = timings or {}
    return SmokeResult(ttft_s=timings.get("ttft_s"), tokens=timings.get("tokens"), decode_s=timings.get("decode_s"),
                       text=text)
