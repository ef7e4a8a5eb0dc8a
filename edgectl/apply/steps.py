"""The steps apply runs on one device for one deployment: check the artifact and the device (runtime, signing key,
disk) before any byte is sent, push, activate, pass the health gate, and roll back when something failed."""

from __future__ import annotations

import json

from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.signing import KEY_UNUSABLE

from edgectl.agent_client import AgentClient
from edgectl.builders import ArtifactStore, builder_for, lookup
from edgectl.errors import EdgectlError, PlanError
from edgectl.plan import DeploymentPlan, DevicePlan, compat, recipe_id
from edgectl.plan.settings import served_settings
from edgectl.signing import rollback_deployment, signed
from edgectl.spec import BuiltArtifact, Spec
from edgectl.spec.deployment import HealthGate, gates_for
from edgectl.paths import VERIFY_KEY_FILE

from edgectl.apply.observe import DeviceContext
from edgectl.apply.report import DeviceResult, Events
from edgectl.apply.rollout import answer_problems, gate_detail, gate_problems

# A push needs the bytes still missing on the device plus this share free on its store (what the agent reports right
# before the push): room for the runtime's own files and the state, and never a device filled to the last byte.
DISK_MARGIN = 0.10

Artifacts = dict[str, tuple[BuiltArtifact, bool]]  # recipe id -> (artifact, built by this run)


class Refused(PlanError):
    """A device refused before anything was changed on it (nothing to roll back)."""


def dep_plan(dp: DevicePlan, name: str) -> DeploymentPlan | None:
    return next((d for d in dp.deployments if d.deployment == name), None)


def deploy_one(spec: Spec, dp: DevicePlan, name: str, ctx: DeviceContext, store: ArtifactStore,
               artifacts: Artifacts, res: DeviceResult, events: Events) -> bool:
    """Push, activate and gate one deployment on one device; on failure roll it back (when the rollout says so).
    True when it serves the new artifact and passed the gate."""
    dep = dep_plan(dp, name)
    rollout = spec.deployments[name].spec.rollout
    try:
        changed = apply_deployment(spec, dp, dep, ctx, store, artifacts, res, events)
        if changed:
            health_gate(gates_for(rollout.health_gate, spec.models[dep.model].spec.goldens), name,
                        "embedding" if dep.chosen.embedding else dep.chosen.recipe.kind, ctx, res, events)
        return True
    except EdgectlError as e:
        res.error = str(e)
        events.info(dp.device, f"{name} failed: {e.message}")
        if rollout.rollback and not isinstance(e, Refused):
            roll_back(name, ctx, res, events, "it failed", store)
        return False


def apply_deployment(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, ctx: DeviceContext, store: ArtifactStore,
                     artifacts: Artifacts, res: DeviceResult, events: Events) -> bool:
    """Run one deployment's steps on one device; True when it activated something."""
    client = ctx.client
    if client is None:
        raise PlanError(f"device '{dp.device}': no agent to apply to", hint="see the agent's log")
    art = artifact_for(spec, dp, dep, ctx, store, artifacts, res)
    activated = False
    for step in dep.steps:
        if step.action == "push":
            check_disk(dp.device, dep.deployment, art, store, client)
            events.info(dp.device, f"push {art.digest[:19]} ({art.size_bytes / 1e6:.1f} MB)")
            client.upload_blobs(store.blobs_of(art),
                                progress=lambda d, t, _a=art: events.progress(
                                    f"push:{dp.device}:{_a.digest}", f"push to {dp.device}", d, t))
            res.actions.append(f"pushed {art.digest[:19]}")
        elif step.action == "activate":
            events.info(dp.device, f"activate {step.deployment} ({art.format} {art.quant})")
            client.put_deployment(signed(ctx.signer, desired_deployment(spec, dp, dep, art,
                                                                        kind=dep.chosen.recipe.kind)))
            res.actions.append(f"activated {step.deployment}")
            activated = True
    return activated


def artifact_for(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, ctx: DeviceContext, store: ArtifactStore,
                 artifacts: Artifacts, res: DeviceResult) -> BuiltArtifact:
    """The built artifact for this deployment, checked against the runtime the device reports and its signing key
    (before any byte is pushed); notes in ``res`` whether it was built now or found in the cache."""
    rid = recipe_id(dep.chosen.recipe)
    art, fresh = artifacts[rid] if rid in artifacts else (
        lookup(dep.chosen.recipe, spec.models[dep.model], store), False)
    if art is None:  # internal invariant: every planned build ran before devices are touched
        raise PlanError(f"artifact {rid} is not in the local store", hint="run `edgectl build` and retry")
    runtime = dep.chosen.runtime
    reported = dict(ctx.facts.runtimes) if ctx.facts is not None else {}
    why = compat.mismatch(art.compat, runtime, reported.get(runtime), reported)
    if why:  # found only now that the artifact exists: refuse before any byte is pushed
        raise Refused(f"device '{dp.device}', deployment '{dep.deployment}': {art.format} {art.quant} "
                      f"cannot be loaded there: {why}", hint="nothing was pushed to this device; "
                      "`edgectl plan` shows the same check")
    check_signing_key(dp.device, ctx)
    if any(step.action == "build" for step in dep.steps):
        res.actions.append(f"{'built' if fresh else 'found in cache'} {art.format} {art.quant}")
    return art


def desired_deployment(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, art: BuiltArtifact, *,
                       kind: str = "llm") -> DesiredDeployment:
    """What the agent is asked to serve: the artifact, its runtime, and the settings of
    edgectl.plan.settings.RELOAD_FIELDS (the same ones the planner compares to decide a reload)."""
    d = spec.deployments[dep.deployment].spec
    planned_options = dep.chosen.runtime_options if dep.chosen is not None else {}
    return DesiredDeployment(
        name=dep.deployment,
        artifact=ArtifactRef(digest=art.digest, format=art.format, quant=art.quant, size_bytes=art.size_bytes,
                             model=art.model, layout=art.layout),
        runtime=dep.chosen.runtime if dep.chosen is not None else builder_for(art.format, kind).runtime,
        **served_settings(d, d.threads or dp.threads, planned_options, spec.models[dep.model].spec.goldens),
    )


def health_gate(gates: HealthGate | list[HealthGate], name: str, kind: str, ctx: DeviceContext, res: DeviceResult,
                events: Events) -> None:
    """Send the smoke request and judge the agent's timings of it (edgectl.apply.rollout.gate_problems); then ask
    the model's other golden prompts (edgectl.spec.deployment.gates_for) and judge their answers. Every miss is
    reported, not only the first."""
    gate, *more = gates if isinstance(gates, list) else [gates]
    if not gate.smoke:
        return
    r = ctx.client.smoke(name, kind=kind, max_tokens=gate.max_tokens, prompt=gate.prompt)
    problems = gate_problems(gate, r)
    wrong = bool(answer_problems(gate, r.text))
    for extra in more if kind == "llm" else []:
        answer = ctx.client.smoke(name, kind=kind, max_tokens=extra.max_tokens, prompt=extra.prompt).text
        misses = answer_problems(extra, answer)
        problems += misses
        wrong = wrong or bool(misses)
    if problems:
        hint = ("the smoke request ran on the new artifact; relax rollout.health_gate or pick a smaller quant type "
                "(quantization.allow); an agent without timings needs this edgectl's edgectl-agent "
                f"{AGENT_VERSION} on the device")
        if wrong:
            hint = ("the new artifact answered the gate's prompt wrongly: a broken build or too coarse a quant "
                    "type (pick a higher one in quantization.allow), or fix rollout.health_gate.expect_contains / "
                    "expect_regex / expect_json_schema (or the Model's golden_prompts)")
        raise PlanError(f"device '{ctx.device.name}', deployment '{name}': health gate failed (as timed by the "
                        "agent): " + "; ".join(problems), hint=hint)
    detail = gate_detail(r, gate) + (f"; {len(more)} more golden prompts answered right" if more and kind == "llm"
                                     else "")
    events.info(ctx.device.name, f"{name}: health gate passed ({detail})")
    res.actions.append(f"{name}: health gate passed ({detail})")


def roll_back(name: str, ctx: DeviceContext, res: DeviceResult, events: Events, why: str,
              store: ArtifactStore) -> None:
    """Return ``name`` on this device to what the agent served before this run (or remove it if it was new)."""
    try:
        request = rollback_request(name, ctx, store)
        if request["method"] == "PUT":
            ctx.client.put_deployment(request["desired"])
            msg = f"{name}: {request['text']} ({why})"
        else:
            ctx.client.delete_deployment(name)
            msg = f"{name}: removed again ({why}; nothing served it before)"
    except EdgectlError as e:
        msg = f"{name}: rollback failed: {e.message}"
        res.error = (res.error + "\n" if res.error else "") + msg
    events.info(ctx.device.name, msg)
    res.actions.append(msg)


def rollback_request(name: str, ctx: DeviceContext, store: ArtifactStore) -> dict:
    """What returns ``name`` to what the agent served before this run: PUT ``desired`` (the deployment as it was,
    signed), or DELETE a deployment that is new; ``text`` says which. The Ansible engine sends the same request
    (``body``: ``desired`` as JSON)."""
    before = next((d for d in (ctx.observed.deployments if ctx.observed else []) if d.name == name), None)
    if before is not None and before.active is not None and before.desired is not None:
        back = rollback_deployment(before.desired, before.active, signer=ctx.signer, store=store)
        return {"method": "PUT", "desired": back, "body": json.loads(back.model_dump_json()),
                "text": f"rolled back to {before.active.digest[:19]}"}
    return {"method": "DELETE", "text": "removed again (nothing served it before)"}


def check_signing_key(device: str, ctx: DeviceContext) -> None:
    """Refuse, before any byte is pushed, a device whose agent requires signatures by another key than the one its
    fleet signs with (or by a key it cannot load): the agent would refuse the deployment anyway."""
    wanted = ctx.facts.verify_key_id if ctx.facts is not None else None
    if wanted is None:
        return
    signer = ctx.signer
    if wanted == KEY_UNUSABLE:
        raise Refused(f"device '{device}': its agent must verify signatures but cannot load its verify key, so it "
                      "refuses every deployment; nothing was pushed",
                      hint="see the agent's log for the key file and why; put the fleet's public key (the PATH.pub "
                           "of `edgectl keygen PATH`) there and restart the agent")
    if signer is None:
        raise Refused(f"device '{device}': its agent accepts only deployments signed by key {wanted}, and its fleet "
                      "signs nothing; nothing was pushed",
                      hint="add `signing: {key_file: PATH}` to the Fleet's spec, PATH being the private key of that "
                           "public key (`edgectl keygen PATH` makes a pair)")
    if signer.key_id != wanted:
        raise Refused(f"device '{device}': its agent accepts only deployments signed by key {wanted}, and its fleet "
                      f"signs with key {signer.key_id} ({signer.path}); nothing was pushed",
                      hint="point the Fleet's spec.signing.key_file at the private key the device trusts; if the key "
                           "changed on purpose, install its PATH.pub as the agent's verify key and restart the agent "
                           f"(a local agent: replace {VERIFY_KEY_FILE} in its root)")


def disk_shortfall(missing: int, free: int, margin: float = DISK_MARGIN) -> int | None:
    """Bytes needed (missing + margin) when ``free`` is less than that, else None."""
    need = int(missing * (1 + margin))
    return need if free < need else None


def check_disk(device: str, deployment: str, art: BuiltArtifact, store: ArtifactStore, client: AgentClient) -> None:
    """Refuse a push, before any byte is sent, when the device's store has less free space than the bytes still
    missing there plus DISK_MARGIN. Free space is what the agent reports now, not a profile's figure, and earlier
    pushes of this run are already counted in it."""
    held = set(client.state().artifacts)
    missing = 0
    for digest, path in store.blobs_of(art):
        if digest not in held:
            missing += path.stat().st_size - client.upload_status(digest).received_bytes
    free = client.facts().disk_free_bytes
    need = disk_shortfall(missing, free)
    if need is not None:
        raise Refused(f"device '{device}', deployment '{deployment}': not enough disk for {art.format} {art.quant} "
                      f"{art.digest[:19]}: {_mb(missing)} to push + {DISK_MARGIN:.0%} = {_mb(need)} needed, the "
                      f"agent reports {_mb(free)} free on its store; nothing was pushed",
                      hint="free space on the device (remove deployments it no longer needs; the agent deletes "
                           "their artifacts), give its agent a bigger disk (transport.agent_dir), or allow a "
                           "smaller quant type (quantization.allow)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB ({n} bytes)"
