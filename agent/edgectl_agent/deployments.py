"""Deployments on this device: blue-green activation, removal, and recovery from state.json at start.

Activation loads the new artifact beside the serving one, runs a real smoke inference, then switches by replacing
one dict entry (requests pick up the new model on their next lookup) and persists the state. On any failure the
old model keeps serving and the deployment records the runtime's message. Activations are serialized: two models
loading at once could exhaust a small device's memory. Every load is recorded beforehand (edgectl_agent.attempts),
so an artifact whose loading keeps killing the agent is marked broken and the previous one serves instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from edgectl_agent.api import ArtifactRef, DeploymentState, DesiredDeployment
from edgectl_agent.attempts import LoadAttempts
from edgectl_agent.benchmark import Benchmarks
from edgectl_agent.errors import (AgentError, Conflict, Forbidden, ModelUnavailable, NotFound, RuntimeFailure,
                                   Unprocessable)
from edgectl_agent.faults import crash_point
from edgectl_agent.metrics import AgentMetrics
from edgectl_agent.runtimes.base import LoadedModel, Runtime
from edgectl_agent.settings import AgentSettings
from edgectl_agent.signing import Verifier
from edgectl_agent.store import ArtifactStore, StateFile, sha256_file

log = logging.getLogger(__name__)
T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Serving:
    """A loaded model answering for a deployment, and the desired settings it was loaded with."""

    desired: DesiredDeployment
    model: LoadedModel

    @property
    def artifact(self) -> ArtifactRef:
        return self.desired.artifact


async def run_on_active(lookup: Callable[[], Serving], call: Callable[[Serving], T]) -> tuple[Serving, T]:
    """``call(serving)`` in a worker thread, on the model ``lookup`` finds. A swap closes the old model once the
    inference running on it is done; a request that was still waiting for it (ModelUnavailable) runs again on the
    model active now, so swapping under load fails no request."""
    serving = lookup()
    while True:
        try:
            return serving, await anyio.to_thread.run_sync(call, serving)
        except ModelUnavailable:
            newer = lookup()
            if newer is serving:
                raise
            serving = newer


class Deployments:
    def __init__(self, settings: AgentSettings, store: ArtifactStore, state_file: StateFile,
                 runtimes: dict[str, Runtime], metrics: AgentMetrics, *, verifier: Verifier | None = None) -> None:
        self.settings = settings
        self.verifier = verifier  # None: signatures are not checked
        self.store = store
        self.state_file = state_file
        self.runtimes = runtimes
        self.metrics = metrics
        self.serving: dict[str, Serving] = {}
        self.states: dict[str, DeploymentState] = {}
        self._lock = asyncio.Lock()
        self._loaded_at_start: dict[str, DesiredDeployment] = {}
        # per deployment, the desired deployment (as received, signed) its previous artifact was served with
        self._previous: dict[str, DesiredDeployment] = {}
        self.attempts = LoadAttempts(settings.root, limit=settings.crash_loop_limit,
                                     window_s=settings.crash_loop_window_s)
        self.benchmarks = Benchmarks(settings.root, enabled=settings.benchmark)
        metrics.live.benchmark = self.measured_speeds

    # -- queries ----------------------------------------------------------------------------------------------
    def serving_model(self, name: str) -> Serving:
        """The model answering for deployment ``name`` (the model id in OpenAI requests)."""
        serving = self.serving.get(name)
        if serving is None:
            known = ", ".join(sorted(self.serving)) or "none"
            raise NotFound(f"the model '{name}' does not exist on this device (serving: {known})",
                           hint="use a deployment name from GET /v1/models as the model id",
                           param="model", code="model_not_found")
        return serving

    def snapshot(self) -> list[DeploymentState]:
        return [self.states[n] for n in sorted(self.states)]

    def backends(self) -> list[tuple[str, str, bool]]:
        """(deployment, runtime, a loaded model answers) for every deployment: what backend_up reports."""
        out = []
        for name in sorted(self.states):
            serving = self.serving.get(name)
            desired = serving.desired if serving else self.states[name].desired
            out.append((name, desired.runtime if desired else "none", serving is not None))
        return out

    def measured_speeds(self):
        """(device benchmark or None, [(deployment, its active artifact's measured rates)]): what /metrics shows."""
        out = []
        for name in sorted(self.serving):
            d = self.serving[name].desired
            speed = self.benchmarks.artifact(d.artifact.digest, d.runtime, d.threads)
            if speed is not None:
                out.append((name, speed))
        return self.benchmarks.current(), out

    def not_ready(self) -> list[str]:
        """Why the device does not serve everything desired; empty = ready."""
        reasons = []
        for s in self.snapshot():
            if s.state != "serving":
                why = f": {s.last_error}" if s.last_error else ""
                reasons.append(f"deployment '{s.name}' is {s.state}{why}")
        return reasons

    # -- state ------------------------------------------------------------------------------------------------
    def _set(self, name: str, **changes) -> DeploymentState:
        old = self.states.get(name)
        if old is None:
            state = DeploymentState(**{"name": name, "since": _now(), "state": "loading", **changes})
        else:
            if "state" in changes and changes["state"] != old.state:
                changes.setdefault("since", _now())
            state = old.model_copy(update=changes)
        self.states[name] = state
        self.metrics.set_phase(name, state.state)
        return state

    async def _persist(self, garbage: set[str] = frozenset()) -> None:
        """Write state.json; ``garbage``: artifacts this change stops referring to, deleted next (or at the next
        start, after a crash in between)."""
        states = [s for s in self.snapshot() if s.state != "removed"]
        # Deployments not yet recovered keep the settings they were loaded with before the restart.
        loaded = {n: d for n, d in self._loaded_at_start.items() if n in self.states}
        loaded.update({name: s.desired for name, s in self.serving.items()})
        previous = {n: d for n, d in self._previous.items() if n in self.states}
        await anyio.to_thread.run_sync(lambda: self.state_file.save(states, loaded, previous, garbage=garbage))

    # -- loading ----------------------------------------------------------------------------------------------
    def _loadable(self, desired: DesiredDeployment) -> tuple[Runtime, Path]:
        """The runtime and artifact path for ``desired``, or why it cannot be loaded here (nothing changes)."""
        runtime = self.runtimes.get(desired.runtime)
        if runtime is None:
            raise Unprocessable(f"runtime '{desired.runtime}' is not available on this agent "
                                f"(available: {', '.join(sorted(self.runtimes)) or 'none'})",
                                hint="choose an available runtime, or install its extra, e.g. "
                                     "pip install 'edgectl-agent[llama]' or 'edgectl-agent[onnx]'",
                                type="runtime_unavailable")
        artifact = desired.artifact
        if artifact.format not in runtime.capabilities.formats:
            raise Unprocessable(f"runtime '{runtime.name}' cannot load {artifact.format} artifacts",
                                hint=f"it loads: {', '.join(runtime.capabilities.formats)}")
        if artifact.layout == "tree":
            files = self.store.tree_files(artifact.digest)  # missing manifest = Conflict, bad paths = 422
            size = sum(f.size for f in files)
            path = self.store.tree_path(artifact.digest)
        else:
            path = self.store.path(artifact.digest)
            if not self.store.has(artifact.digest):  # a symlink planted there counts as missing
                raise Conflict(f"artifact {artifact.digest} is not in this device's store",
                               hint=f"upload it first: PUT /control/v1/artifacts/{artifact.digest} (edgectl apply "
                                    "does this)", type="artifact_missing", code=artifact.digest)
            size = path.stat().st_size
        if size != artifact.size_bytes:
            raise Unprocessable(f"artifact {artifact.digest} has {size} bytes on the device, the deployment "
                                f"says size_bytes={artifact.size_bytes}",
                                hint="send the artifact's real size in the deployment (edgectl apply does)")
        self.attempts.check(artifact.digest)  # crashed the agent too often: broken
        return runtime, path

    async def _load(self, desired: DesiredDeployment, *, rehash: bool = False) -> LoadedModel:
        """Load and smoke-test ``desired.artifact``; RuntimeFailure (with the runtime's message) on failure."""
        runtime, path = self._loadable(desired)
        artifact = desired.artifact
        if artifact.layout == "tree":  # lay the folder out from its verified member blobs (every file checked)
            path = await anyio.to_thread.run_sync(lambda: self.store.materialize(artifact.digest, rehash=rehash))
        if rehash and await anyio.to_thread.run_sync(sha256_file, self.store.path(artifact.digest)) != artifact.digest:
            raise RuntimeFailure(f"artifact {artifact.digest} on disk no longer matches its digest (corrupted)",
                                 hint="push it again: edgectl apply uploads missing artifacts")
        # Recorded before the runtime starts, cleared when it returns: left recorded only by a crash.
        attempt = await anyio.to_thread.run_sync(self.attempts.begin, artifact.digest)
        try:
            crash_point("load", artifact.digest)
            start = time.perf_counter()
            model = await anyio.to_thread.run_sync(runtime.load, path, desired)
            load_s = time.perf_counter() - start
            crash_point("smoke", artifact.digest)
            try:
                await anyio.to_thread.run_sync(model.smoke, self.settings.smoke_prompt,
                                               self.settings.smoke_max_tokens)
            except Exception as e:
                await anyio.to_thread.run_sync(model.close)
                if isinstance(e, AgentError):
                    raise RuntimeFailure(f"smoke inference of {artifact.digest} failed: {e.message}",
                                         hint=e.hint) from e
                raise RuntimeFailure(f"smoke inference of {artifact.digest} failed: {type(e).__name__}: {e}",
                                     hint="see the agent log; the previous artifact keeps serving") from e
            # First activation of this artifact with these threads: its real rates (edgectl_agent.benchmark).
            await anyio.to_thread.run_sync(lambda: self.benchmarks.measure_artifact_once(
                model, digest=artifact.digest, runtime=desired.runtime, threads=desired.threads,
                context_length=desired.context_length))
        finally:
            await anyio.to_thread.run_sync(self.attempts.end, artifact.digest, attempt)
        self.metrics.load_seconds.labels(deployment=desired.name).set(load_s)
        log.info("deployment %s: loaded %s in %.2f s, smoke inference ok", desired.name, artifact.digest, load_s)
        return model

    # -- control ----------------------------------------------------------------------------------------------
    async def activate(self, desired: DesiredDeployment) -> DeploymentState:
        name = desired.name
        if self.verifier is not None:
            self.verifier.check(desired)  # unsigned or wrongly signed: refused before anything changes
        async with self._lock:
            current = self.serving.get(name)
            state = self.states.get(name)
            if current is not None and state is not None and current.desired == desired and state.state == "serving":
                return state  # already serving exactly this: nothing to do
            self._loadable(desired)  # unknown runtime, artifact not uploaded: refuse before changing anything
            old_active = state.active if state else None
            old_previous = state.previous if state else None
            self._set(name, desired=desired, state="loading", active=old_active, previous=old_previous)
            try:
                model = await self._load(desired)
            except AgentError as e:
                self.metrics.failed_activations.labels(deployment=name).inc()
                self._set(name, state="failed", last_error=e.message)
                await self._persist()
                log.warning("deployment %s: activation of %s failed, %s keeps serving: %s", name,
                            desired.artifact.digest, old_active.digest if old_active else "nothing", e.message)
                raise
            except Exception as e:
                self.metrics.failed_activations.labels(deployment=name).inc()
                message = f"{type(e).__name__}: {e}"
                self._set(name, state="failed", last_error=message)
                await self._persist()
                log.exception("deployment %s: activation failed", name)
                raise RuntimeFailure(message, hint="see the agent log; the previous artifact keeps serving") from e
            # Switch: one dict assignment; requests already running finish on the old model.
            self.serving[name] = Serving(desired, model)
            new_active = desired.artifact
            if old_active is not None and old_active.digest != new_active.digest:
                new_previous = old_active
                if current is not None and current.artifact == old_active:
                    self._previous[name] = current.desired
                else:
                    self._previous.pop(name, None)
                self.metrics.swaps.labels(deployment=name).inc()
                if old_previous is not None and old_previous.digest == new_active.digest:
                    self.metrics.rollbacks.labels(deployment=name).inc()  # back to the artifact kept for this
            else:
                new_previous = old_previous
            result = self._set(name, state="serving", active=new_active, previous=new_previous, last_error=None,
                               since=_now())
            self.metrics.set_active(name, new_active)
            self.metrics.last_deploy.labels(deployment=name).set(time.time())
            garbage = self._garbage({a.digest for a in (old_active, old_previous) if a is not None})
            crash_point("switch.before_state", new_active.digest)
            await self._persist(garbage)
            crash_point("switch.after_state", new_active.digest)
            if current is not None:
                await anyio.to_thread.run_sync(current.model.close)
            crash_point("cleanup", new_active.digest)
            self._delete(garbage)
            log.info("deployment %s: serving %s (previous %s)", name, new_active.digest,
                     new_previous.digest if new_previous else "none")
            return result

    async def remove(self, name: str) -> DeploymentState:
        async with self._lock:
            state = self.states.get(name)
            if state is None:
                raise NotFound(f"deployment '{name}' does not exist on this device",
                               hint="GET /control/v1/state lists the deployments", type="deployment_not_found")
            current = self.serving.pop(name, None)
            removed = self._set(name, state="removed", active=None, previous=None, last_error=None)
            del self.states[name]
            self._previous.pop(name, None)
            self.metrics.forget(name)
            garbage = self._garbage({a.digest for a in (state.active, state.previous, state.desired and
                                                        state.desired.artifact) if a is not None})
            await self._persist(garbage)
            if current is not None:
                await anyio.to_thread.run_sync(current.model.close)
            self._delete(garbage)
            log.info("deployment %s removed", name)
            return removed

    def _garbage(self, candidates: set[str]) -> set[str]:
        """The artifacts among ``candidates`` (and their member files) that no deployment serves, keeps as previous,
        or wants."""
        referenced: set[str] = set()
        for s in self.states.values():
            for ref in (s.active, s.previous, s.desired.artifact if s.desired else None):
                if ref is not None:
                    referenced |= self._with_members(ref.digest)
        expanded: set[str] = set()
        for digest in candidates:
            expanded |= self._with_members(digest)
        return expanded - referenced

    def _delete(self, garbage: set[str]) -> None:
        for digest in sorted(garbage):
            self.store.delete(digest)
            crash_point("cleanup.after_delete", digest)

    def _with_members(self, digest: str) -> set[str]:
        """A digest, plus the member file blobs when it is a directory artifact's manifest."""
        if not self.store.is_tree(digest):
            return {digest}
        try:
            return {digest} | {f.sha256 for f in self.store.tree_files(digest)}
        except AgentError:  # an invalid manifest: it and only it goes
            return {digest}

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def recover(self) -> None:
        """Serve what state.json says, with no control plane: the active artifact, else the previous one."""
        states, loaded, previous = self.state_file.load_all()
        self._loaded_at_start = loaded
        self._previous = previous
        for s in states:
            self.states[s.name] = s
            self._set(s.name, state="loading")
        # The deletions a crash interrupted (state.json lists them; still-referenced ones are kept).
        self._delete(self._garbage(self.state_file.garbage()))
        for s in states:
            async with self._lock:
                if s.name not in self.states or self.states[s.name].state != "loading":
                    continue  # the control plane changed it meanwhile
                await self._recover_one(s, loaded.get(s.name))
        if states:
            await self._persist()

    async def _recover_one(self, s: DeploymentState, loaded: DesiredDeployment | None) -> None:
        errors = []
        for ref, role in ((s.active, "active"), (s.previous, "previous")):
            if ref is None:
                continue
            base = loaded or s.desired
            if base is None:
                continue
            desired = base if base.artifact == ref else base.model_copy(update={"artifact": ref})
            try:
                if self.verifier is not None:  # state.json is only a file: serve nothing it says without a signature
                    desired = self._signed_record(ref, (loaded, s.desired, self._previous.get(s.name)))
                    self.verifier.check(desired)
                model = await self._load(desired, rehash=self.settings.verify_on_start)
            except AgentError as e:
                errors.append(f"{role} {ref.digest}: {e.message}")
                self.metrics.failed_activations.labels(deployment=s.name).inc()
                continue
            self.serving[s.name] = Serving(desired, model)
            self.metrics.set_active(s.name, ref)
            wanted = s.desired is None or s.desired == desired
            if role == "active":
                phase = "serving" if wanted and s.last_error is None else "failed"
                self._set(s.name, state=phase, last_error=None if phase == "serving" else s.last_error)
            else:
                self.metrics.rollbacks.labels(deployment=s.name).inc()
                self._previous.pop(s.name, None)
                self._set(s.name, state="failed", active=ref, previous=None,
                          last_error=f"at start, fell back to the previous artifact: {'; '.join(errors)}")
            log.info("deployment %s: recovered, serving %s", s.name, ref.digest)
            return
        self._set(s.name, state="failed", last_error="at start, nothing could be loaded: " +
                  ("; ".join(errors) or "no artifact recorded"))
        log.error("deployment %s: %s", s.name, self.states[s.name].last_error)

    @staticmethod
    def _signed_record(ref: ArtifactRef, recorded: tuple[DesiredDeployment | None, ...]) -> DesiredDeployment:
        """The desired deployment recorded for ``ref`` exactly as it was received (so its signature can be
        checked), not one rebuilt from other settings."""
        for desired in recorded:
            if desired is not None and desired.artifact == ref:
                return desired
        raise Forbidden(f"no signed deployment of {ref.digest} is recorded in state.json", type="signature_missing",
                        hint="edgectl apply sends it again, signed")

    async def close(self) -> None:
        async with self._lock:
            for name in list(self.serving):
                await anyio.to_thread.run_sync(self.serving.pop(name).model.close)
