"""Rollouts for pull devices: waves and canaries published as successive desired states.

edgectl never reaches a pull device, so a wave is a publish, and what the wave did is read back from the devices'
own reports (Pushgateway -> Prometheus, edgectl.pull.status):

1. The deployment's devices whose published state differs from the desired one are its targets, in the order of
   the manifests; edgectl.apply.rollout.waves cuts them into waves (all-at-once, rolling, canary).
2. All-at-once (one wave): every target's new state is published and apply returns; each agent's own blue-green
   activation is the gate (a device that fails keeps serving its previous artifact and reports why).
3. Several waves: apply publishes wave 1, then waits - bounded by ``wave_wait_s`` (the Fleet's
   spec.pull.wave_wait_s; by default three poll intervals plus five minutes for the transfer), with progress -
   until each of the wave's devices reports that it applied the new state version and what its health-gate smoke
   request found (judged here with the one gate rule, edgectl.apply.rollout.gate_problems), or that it failed or
   refused it. A device with no such report by then
   counts as failed. The wave's failures go to the one halting rule (edgectl.apply.rollout.Halting): within
   ``max_failure``, failed devices are rolled back (``rollback: true``: their previous deployments published again
   under a new version) and the next wave is published; past it, the whole wave is rolled back and later waves are
   never published: their devices keep their old state.
4. A later apply resumes from what is published: devices already on the new state are no longer targets; a halted
   and rolled-back rollout starts again at its first wave (after the manifests are fixed).

Every wave lands in the run record (``edgectl runs``) with its outcome, as for push devices.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from edgectl_agent.api import DesiredDeployment
from edgectl_agent.pull_state import GoldenAsk, PublishedState, SmokeRequest

from edgectl.apply.report import DeviceResult, Events
from edgectl.apply.rollout import (Halting, answer_problems, gate_detail, gate_problems, is_canary, wave_label,
                                   waves)
from edgectl.errors import PlanError
from edgectl.pull.status import DeviceReport, read_reports
from edgectl.runs import RunRecord
from edgectl.spec import Spec
from edgectl.spec.deployment import HealthGate, gates_for
from edgectl.spec.fleet import PullRegistry

TRANSFER_ALLOWANCE_S = 300.0
CHECK_EVERY_S = 2.0


def wave_wait_s(pull: PullRegistry) -> float:
    """How long apply waits for a wave's devices to report: the Fleet's ``spec.pull.wave_wait_s``, by default three
    poll intervals (jitter, one missed poll) plus time to download and load."""
    if pull.wave_wait_s is not None:
        return float(pull.wave_wait_s)
    return 3 * pull.poll_interval_s + TRANSFER_ALLOWANCE_S


@dataclass
class PullTarget:
    """One pull device as the rollout sees it: what is published for it now and what is desired."""

    device: str
    pull: PullRegistry
    published: dict[str, DesiredDeployment]  # name -> deployment, as in its current published state
    desired: dict[str, DesiredDeployment]
    kinds: dict[str, str] = field(default_factory=dict)  # name -> recipe kind (llm, tensor): the smoke request


# publish(device, deployments, gates) -> the state published (None: the same one was already there)
Publisher = Callable[[str, list[DesiredDeployment], dict[str, SmokeRequest]], PublishedState | None]


class PullRollout:
    def __init__(self, spec: Spec, targets: dict[str, PullTarget], publish: Publisher,
                 results: dict[str, DeviceResult], events: Events, record: RunRecord | None,
                 read: Callable[[str], dict[str, DeviceReport]] = read_reports, clock=time.monotonic,
                 sleep=time.sleep) -> None:
        self.spec, self.targets, self._publish = spec, targets, publish
        self.results, self.events, self.record = results, events, record
        self.read, self.clock, self.sleep = read, clock, sleep

    # -- what to publish --------------------------------------------------------------------------------------
    def gates(self, device: str) -> dict[str, SmokeRequest]:
        t = self.targets[device]
        out = {}
        for name in t.published:
            gates = self.gates_of(name) if name in self.spec.deployments else None
            if gates is not None and gates[0].smoke:
                kind = t.kinds.get(name, "llm")
                more = [GoldenAsk(prompt=g.prompt, max_tokens=g.max_tokens) for g in gates[1:]] if kind == "llm" else []
                out[name] = SmokeRequest(kind=kind, prompt=gates[0].prompt, max_tokens=gates[0].max_tokens, more=more)
        return out

    def gates_of(self, name: str) -> list[HealthGate]:
        """The smoke requests of deployment ``name``'s health gate: rollout.health_gate, asking the model's golden
        prompts unless it sets its own (edgectl.spec.deployment.gates_for), as for push devices."""
        spec = self.spec.deployments[name].spec
        # (a rules test passes bare deployments: no models, no model name)
        model = getattr(self.spec, "models", {}).get(getattr(spec, "model", None))
        return gates_for(spec.rollout.health_gate, model.spec.goldens if model is not None else [])

    def publish(self, device: str) -> PublishedState | None:
        t = self.targets[device]
        state = self._publish(device, [t.published[n] for n in sorted(t.published)], self.gates(device))
        if state is not None:
            self.results[device].actions.append(f"published state version {state.version} "
                                                f"(expires {state.expires_at.isoformat()})")
            self.events.info(device, f"published state version {state.version}")
        return state

    def orders(self) -> dict[str, list[list[str]]]:
        """Per deployment, its waves over the devices whose published state differs from the desired one; refused
        before anything is published when a rollout of several waves cannot read its devices' reports."""
        out = {}
        for name in sorted(self.spec.deployments):
            rollout = self.spec.deployments[name].spec.rollout
            changed = [d for d, t in self.targets.items()
                       if name in t.desired and t.published.get(name) != t.desired[name]]
            order = waves(rollout, changed)
            if len(order) > 1:
                blind = [d for d in changed if self.targets[d].pull.prometheus is None]
                if blind:
                    raise PlanError(f"deployment '{name}' rolls out to pull devices in {len(order)} waves "
                                    f"({rollout.strategy}), but edgectl cannot read the reports of "
                                    f"{', '.join(blind)}: nothing was published",
                                    hint="set spec.pull.pushgateway and spec.pull.prometheus on their Fleet (and "
                                         "enroll the devices again), or use rollout.strategy: all-at-once")
            if order:
                out[name] = order
        return out

    # -- the rollout ------------------------------------------------------------------------------------------
    def run(self) -> list[str]:
        """Publish every deployment's waves in turn; returns why a rollout halted (one line per halted one)."""
        halted = []
        for name, order in self.orders().items():
            why = self.roll_out(name, order)
            if why:
                halted.append(why)
        for device, t in self.targets.items():  # removals, and a fresh expiry for states about to go stale
            for name in [n for n in t.published if n not in t.desired]:
                del t.published[name]
            self.publish(device)
        return halted

    def roll_out(self, name: str, order: list[list[str]]) -> str | None:
        rollout = self.spec.deployments[name].spec.rollout
        halting = Halting(name, rollout, order)
        for i, wave in enumerate(order):
            label = wave_label(rollout, i, len(order))
            w = self.record.wave(name, i, wave, canary=is_canary(rollout, i)) if self.record else {}
            self.events.info(None, f"{name}: {label}: publishing for {', '.join(wave)}")
            before = {d: dict(self.targets[d].published) for d in wave}
            versions = {}
            for d in wave:
                self.targets[d].published[name] = self.targets[d].desired[name]
                state = self.publish(d)
                versions[d] = state.version if state is not None else 0
            if len(order) == 1:  # nothing later to hold back: each agent's own activation is the gate
                w["outcome"] = "published"
                return None
            problems = self.wait(name, label, versions)
            failed = [d for d in wave if problems[d]]
            why = halting.after_wave(i, len(failed))
            for d in wave:
                if problems[d]:
                    self.results[d].error = f"{name}: {problems[d]}"
            if rollout.rollback:
                for d in (wave if why else failed):
                    self.targets[d].published = before[d]
                    state = self.publish(d)
                    if state is not None:
                        self.results[d].actions.append(f"rolled back {name}: state version {state.version} "
                                                       "has its previous deployments")
            if why:
                w["outcome"] = "halted"
                return why
            w["outcome"] = halting.outcome()
        return None

    def wait(self, name: str, label: str, versions: dict[str, int]) -> dict[str, str | None]:
        """Wait until each device of the wave reports ``versions[device]`` applied and its gate, or its failure;
        device -> why it failed (None: it passed)."""
        gate = self.gates_of(name)
        wait_s = max(wave_wait_s(self.targets[d].pull) for d in versions)
        deadline = self.clock() + wait_s
        outcome: dict[str, str | None] = {}
        last_error = ""
        key = f"pull {name} {label}"
        while True:
            reports: dict[str, DeviceReport] = {}
            for prometheus in sorted({self.targets[d].pull.prometheus for d in versions if d not in outcome}):
                try:
                    reports.update(self.read(prometheus))
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    last_error = f"; reading {prometheus} failed: {e}"
            for d, version in versions.items():
                if d in outcome or d not in reports:
                    continue
                judged = judge(reports[d], name, version, self.targets[d].desired[name].artifact.digest, gate)
                if judged is not None:
                    ok, detail = judged
                    outcome[d] = None if ok else detail
                    self.events.info(d, f"{name}: {'health gate passed, ' + detail if ok else detail}")
                    if ok:
                        self.results[d].actions.append(f"{name}: state version {version} applied, health gate "
                                                       f"passed ({detail})")
            self.events.progress(key, f"{name} {label}: devices reported", len(outcome), len(versions))
            if len(outcome) == len(versions):
                return outcome
            if self.clock() >= deadline:
                for d, version in versions.items():
                    outcome.setdefault(d, f"no report of state version {version} applied within {wait_s:.0f} s "
                                          f"(is the device online and enrolled?){last_error}")
                return outcome
            self.sleep(CHECK_EVERY_S)


def judge(report: DeviceReport, name: str, version: int, digest: str, gate) -> tuple[bool, str] | None:
    """What ``report`` says about state ``version`` of deployment ``name`` (pinning ``digest``): (passed, detail),
    or None while it says nothing yet. ``gate`` is a HealthGate, or the list of edgectl.spec.deployment.gates_for
    (the others' answers are the report's ``answers``)."""
    gate, *more = gate if isinstance(gate, list) else [gate]
    if report.applied_version >= version:
        if not gate.smoke:
            return True, "applied (no smoke request)"
        seen = report.gates.get(name)
        if seen is None or seen.version < version:
            return None
        if seen.error:
            return False, f"health gate failed on state version {version}: {seen.error}"
        if seen.digest != digest:
            return False, f"state version {version} applied but {seen.digest or 'nothing'} serves, not {digest}"
        problems = gate_problems(gate, seen.result)
        if more and seen.result.tokens is not None:  # an LLM's answers (a tensor model has no golden prompts)
            answers = list(seen.answers)
            if len(answers) < len(more):
                problems.append(f"the agent reported {len(answers)} of {len(more)} golden prompt answers after the "
                                f"first (an edgectl-agent older than this edgectl does not ask them)")
            for extra, answer in zip(more, answers):
                problems += answer_problems(extra, answer)
        if problems:
            return False, f"health gate failed on state version {version}: " + "; ".join(problems)
        return True, gate_detail(seen.result, gate) + (f"; {len(more)} more golden prompts answered right"
                                                       if more and seen.result.tokens is not None else "")
    if report.version >= version and report.outcome in ("failed", "error"):
        return False, f"state version {version} not applied: {report.error or report.outcome}"
    return None
