"""Publish to a fleet's OCI registry what its pull devices should serve: ``edgectl apply`` for pull devices.

Plan and build as for push devices (planned from each device's profile: edgectl never reaches a pull device), then
per fleet's registry (spec.pull):

- each artifact as a CNCF ModelPack artifact under the tag ``sha256-<hex of its digest>``: a file artifact is one
  ``application/vnd.cncf.model.weight.v1.raw`` layer; a directory artifact is one layer per member file (weights,
  or ``weight.config`` for the small json/txt files) plus edgectl's tree manifest as a last layer; the config
  (``application/vnd.cncf.model.config.v1+json``) carries the format and quant. Layer digests are the artifact's
  own sha256s, so an agent fetches exactly the blobs its signed state pins.
- each device's desired state (edgectl_agent.pull_state.PublishedState, signed with the fleet's key, version one
  above the one published before) as a one-layer artifact under the tag ``state-<device>``. An unchanged state
  that is still valid for more than half its lifetime is left as it is (apply stays idempotent).

Which devices get their new state when is the rollout's (edgectl.pull.rollout: waves published in turn, judged by
the devices' reports). Nothing connects to a device; agents pick the new state up at their next poll
(edgectl_agent.pull). Site mirrors (spec.pull.mirrors) are warmed with the new artifacts before any state is
published (edgectl.pull.mirrors).
"""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta, timezone

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.pull_state import (MAX_STATE_BYTES, STATE_ARTIFACT_TYPE, STATE_MEDIA_TYPE, PublishedState,
                                      SmokeRequest,
                                      StateSignature, document_bytes, new_state, state_bytes, state_tag)

from edgectl.apply.observe import DeviceContext
from edgectl.apply.planning import build_to_the_floor, make_plan, rejected_error
from edgectl.apply.report import ApplyResult, DeviceResult, Events
from edgectl.apply.steps import desired_deployment
from edgectl.builders import ArtifactStore, lookup
from edgectl.errors import EdgectlError, PlanError
from edgectl.plan import recipe_id
from edgectl.pull.mirrors import artifact_blobs, warm_site_mirrors
from edgectl.pull.oci import RegistryWriter
from edgectl.pull.rollout import PullRollout, PullTarget
from edgectl.signing import Signer, signers_for
from edgectl.spec import BuiltArtifact, Device, Spec
from edgectl.spec.fleet import PullRegistry

MODEL_ARTIFACT_TYPE = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
TREE_MANIFEST = "application/vnd.edgectl.tree.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
FILEPATH = "org.cncf.model.filepath"


def artifact_tag(digest: str) -> str:
    return "sha256-" + digest.split(":", 1)[1]


def writer_for(pull: PullRegistry) -> RegistryWriter:
    env = pull.credentials_env
    return RegistryWriter(pull.registry, pull.repository, plain_http=pull.plain_http,
                          username=os.environ.get(f"{env}_USERNAME"), password=os.environ.get(f"{env}_PASSWORD"))


def publish_artifact(writer: RegistryWriter, store: ArtifactStore, art: BuiltArtifact) -> bool:
    """Push ``art`` as a ModelPack artifact unless its tag exists; True when something was pushed."""
    tag = artifact_tag(art.digest)
    if writer.manifest(tag) is not None:
        return False
    layers = []
    if art.layout == "tree":
        for f in store.tree_files(art.digest):
            size = writer.push_blob_file(store.path(f.sha256), f.sha256)
            kind = WEIGHT_CONFIG if f.path.endswith((".json", ".txt", ".model", ".xml")) else WEIGHT
            layers.append({"mediaType": kind, "digest": f.sha256, "size": size, "annotations": {FILEPATH: f.path}})
        size = writer.push_blob_file(store.path(art.digest), art.digest)
        layers.append({"mediaType": TREE_MANIFEST, "digest": art.digest, "size": size,
                       "annotations": {FILEPATH: ".edgectl-tree.json"}})
    else:
        size = writer.push_blob_file(store.path(art.digest), art.digest)
        layers.append({"mediaType": WEIGHT, "digest": art.digest, "size": size,
                       "annotations": {FILEPATH: f"model.{art.format}"}})
    config = {"descriptor": {"name": art.model, "createdAt": datetime.now(timezone.utc).isoformat()},
              "config": {"format": art.format, "quantization": art.quant},
              "modelfs": {"type": "layers", "diffIds": [x["digest"] for x in layers]}}
    config_digest, config_size = writer.push_blob_bytes(json.dumps(config, sort_keys=True).encode())
    writer.push_manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                          "artifactType": MODEL_ARTIFACT_TYPE,
                          "config": {"mediaType": MODEL_CONFIG, "digest": config_digest, "size": config_size},
                          "layers": layers,
                          "annotations": {"org.opencontainers.image.title": f"{art.model} {art.format} {art.quant}"}},
                         tag)
    return True


def current_state(writer: RegistryWriter, device: str) -> PublishedState | None:
    """The state published for ``device`` now (None when there is none or it cannot be read)."""
    manifest = writer.manifest(state_tag(device))
    layers = [x for x in (manifest or {}).get("layers", []) if x.get("mediaType") == STATE_MEDIA_TYPE]
    if len(layers) != 1:
        return None
    try:
        return PublishedState.model_validate_json(writer.blob(layers[0]["digest"], MAX_STATE_BYTES))
    except (EdgectlError, ValueError):
        return None


def sign_state(signer: Signer, state: PublishedState) -> PublishedState:
    unsigned = state.model_copy(update={"signature": None})
    value = base64.b64encode(signer.key.sign(state_bytes(unsigned))).decode()
    return unsigned.model_copy(update={"signature": StateSignature(key_id=signer.key_id, value=value)})


def publish_state(writer: RegistryWriter, signer: Signer, device: str, deployments: list[DesiredDeployment],
                  pull: PullRegistry, *, now: datetime | None = None,
                  gates: dict[str, SmokeRequest] | None = None) -> PublishedState | None:
    """Publish ``device``'s signed state, one version above the current one; None when the current one already
    says the same and is valid for more than half its lifetime."""
    now = now or datetime.now(timezone.utc)
    valid_for = timedelta(hours=pull.valid_for_h)
    gates = gates or {}
    old = current_state(writer, device)
    if (old is not None and old.deployments == deployments and old.poll_interval_s == pull.poll_interval_s
            and old.gates == gates and old.expires_at - now > valid_for / 2 and old.signature is not None
            and old.signature.key_id == signer.key_id):
        return None
    version = old.version + 1 if old is not None else 1
    state = sign_state(signer, new_state(device, version, deployments, poll_interval_s=pull.poll_interval_s,
                                         valid_for=valid_for, now=now, gates=gates))
    push_state_document(writer, device, document_bytes(state))
    return state


def push_state_document(writer: RegistryWriter, device: str, data: bytes) -> str:
    """Put ``data`` under the tag ``state-<device>`` as a one-layer artifact; returns the manifest digest."""
    empty_digest, empty_size = writer.push_blob_bytes(b"{}")
    digest, size = writer.push_blob_bytes(data)
    return writer.push_manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "artifactType": STATE_ARTIFACT_TYPE,
                                 "config": {"mediaType": EMPTY, "digest": empty_digest, "size": empty_size},
                                 "layers": [{"mediaType": STATE_MEDIA_TYPE, "digest": digest, "size": size}]},
                                state_tag(device))


def publish_pull_devices(spec: Spec, devices: list[Device], *, store: ArtifactStore, events: Events,
                         skip_unfit: bool = False) -> ApplyResult:
    """Plan, build and publish for pull ``devices``; contacts only the registries."""
    signers = signers_for(spec, devices)
    contexts = {d.name: DeviceContext(d, signer=signers[d.name]) for d in devices}
    built: dict[str, BuiltArtifact] = {}
    p = make_plan(spec, contexts, store, built)
    if p.unfit and not skip_unfit:
        raise PlanError(f"a deployment fits on no artifact for: {', '.join(dp.device for dp in p.unfit)}; nothing "
                        "was published", hint="see `edgectl plan`; or pass --skip-unfit")
    # a fresh artifact below its deployment's quality floor makes the plan run again (never published)
    p, artifacts, rejected = build_to_the_floor(spec, p, contexts, store, built, events)
    fleet_of = {d.name: f for f in spec.fleets.values() for d in f.spec.devices}
    results = {dp.device: DeviceResult(dp.device, endpoint=f"pull via {fleet_of[dp.device].spec.pull.registry}",
                                       actions=list(rejected.get(dp.device, [])),
                                       error=rejected_error(dp, rejected, sent="published"))
               for dp in p.devices}
    writers: dict[str, RegistryWriter] = {}
    pushed: set[tuple[str, str]] = set()
    targets: dict[str, PullTarget] = {}
    new_blobs: dict[str, list[str]] = {}  # device -> blobs of the artifacts its next state pins anew
    try:
        for dp in p.devices:
            res, fleet = results[dp.device], fleet_of[dp.device]
            if dp.status != "ok":
                continue
            pull = fleet.spec.pull
            try:
                writer = writers.setdefault(fleet.name, writer_for(pull))
                target = PullTarget(dp.device, pull, published={}, desired={})
                arts: dict[str, BuiltArtifact] = {}
                for dep in dp.deployments:
                    if dep.chosen is None:
                        continue
                    rid = recipe_id(dep.chosen.recipe)
                    art = artifacts[rid][0] if rid in artifacts else lookup(dep.chosen.recipe,
                                                                              spec.models[dep.model], store)
                    if art is None:
                        raise PlanError(f"artifact {rid} is not in the local store", hint="run `edgectl build`")
                    if (writer.where, art.digest) not in pushed:
                        events.info(dp.device, f"publish {art.format} {art.quant} to {writer.where}")
                        if publish_artifact(writer, store, art):
                            res.actions.append(f"published {art.model} {art.format} {art.quant} "
                                               f"({artifact_tag(art.digest)})")
                        pushed.add((writer.where, art.digest))
                    target.desired[dep.deployment] = signers[dp.device].sign(
                        desired_deployment(spec, dp, dep, art, kind=dep.chosen.recipe.kind))
                    target.kinds[dep.deployment] = dep.chosen.recipe.kind
                    arts[dep.deployment] = art
                old = current_state(writer, dp.device)
                target.published = {d.name: d for d in old.deployments} if old is not None else {}
                targets[dp.device] = target
                new_blobs[dp.device] = [b for name, art in arts.items()
                                        if target.published.get(name) != target.desired[name]
                                        for b in artifact_blobs(store, art)]
            except EdgectlError as e:
                res.error = str(e)

        # Before any state pins them: each site mirror fetches the new artifacts once (edgectl.pull.mirrors).
        sites: dict[str, tuple[PullRegistry, list[Device]]] = {}
        for d in devices:
            if d.name in targets and fleet_of[d.name].spec.pull.mirrors:
                sites.setdefault(fleet_of[d.name].name, (fleet_of[d.name].spec.pull, []))[1].append(d)
        warm_site_mirrors(sites, new_blobs, events)

        def publish(device: str, deployments: list[DesiredDeployment], gates: dict) -> PublishedState | None:
            fleet = fleet_of[device]
            return publish_state(writers[fleet.name], signers[device], device, deployments, fleet.spec.pull,
                                 gates=gates)
        halted = PullRollout(spec, targets, publish, results, events, getattr(events, "record", None)).run()
    finally:
        for w in writers.values():
            w.close()
    return ApplyResult(p, [results[dp.device] for dp in p.devices], halted=halted)
