"""Pull mode: the agent polls an OCI registry for its signed desired state and applies it itself.

    edgectl-agent serve --pull-config pull.json      (written by `edgectl enroll DEVICE`)

Each poll: HEAD the tag ``state-<device>`` (the manifest digest is the cheap change detector); when it changed,
read the one-layer state artifact (size-capped, digest-checked), verify it (edgectl_agent.pull_state: signature,
device, monotonic version, expiry), download the artifacts it pins that the store lacks (ranged, resumable, never
beyond the pinned size, sha256-verified by the store), then activate each deployment through the agent's own
blue-green path (load + smoke inference before the switch; a failure keeps the previous artifact serving) and
remove the deployments the state no longer names.

The registry being down changes nothing that serves: polls back off exponentially (with jitter, capped at an hour)
and resume when it answers. What happened last is in ``<root>/pull-status.json`` and the agent log.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path

import anyio

from edgectl_agent.api import ArtifactRef
from edgectl_agent.errors import AgentError
from edgectl_agent.oci import RegistryError, RegistryReader
from edgectl_agent.pull_state import (MAX_MANIFEST_BYTES, MAX_STATE_BYTES, STATE_MEDIA_TYPE, PublishedState,
                                      PullConfig, PullStatus, StateRefused, check_state, parse_state, state_tag)
from edgectl_agent.store import write_atomic
from edgectl_agent.tree import MAX_MANIFEST_BYTES as MAX_TREE_MANIFEST_BYTES

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 3600.0
FIRST_POLL_S = 5.0  # until a state sets the interval
JITTER = 0.2
HEARTBEAT_POLLS = 6  # an unchanged status is reported every this many poll intervals (edgectl_pull_report)
ORIGIN_RETRY_POLLS = 10  # after the origin failed to answer a tag lookup, ask the mirror this many polls
CLOCK_SKEW_WARN_S = 60.0  # beyond this, the device's clock (which judges expiry) is reported as off


def load_config(path: Path) -> PullConfig:
    try:
        return PullConfig.model_validate_json(path.read_bytes())
    except OSError as e:
        raise AgentError(f"cannot read the pull config {path}: {e.strerror or e}",
                         hint="write it with `edgectl enroll DEVICE --out FILE` and copy it to the device") from e
    except ValueError as e:
        raise AgentError(f"{path} is not a valid pull config: {e}",
                         hint="write it again with `edgectl enroll DEVICE --out FILE`") from e


def jittered(seconds: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


def backoff_s(failures: int, interval_s: float) -> float:
    """The wait before the next try after ``failures`` failed polls in a row: the poll interval doubled per
    failure, capped at MAX_BACKOFF_S (the loop adds +-20% jitter, so a fleet cut off together does not return
    together)."""
    return min(MAX_BACKOFF_S, interval_s * 2 ** min(failures, 12))


class Puller:
    """One agent's pull loop. ``agent``: edgectl_agent.app.Agent (its store, deployments, upload guard)."""

    def __init__(self, agent, config: PullConfig, reader: RegistryReader | None = None) -> None:
        from edgectl_agent.signing import _crypto, key_id

        _, serialization = _crypto()
        self.agent, self.config = agent, config
        self.public_key = serialization.load_pem_public_key(config.verify_key_pem.encode())
        self.key_id = key_id(self.public_key.public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw))
        self.reader = reader or RegistryReader(config.registry, config.repository, scheme=config.scheme,
                                               username=config.username, password=config.password)
        self.origin_reader = (RegistryReader(config.origin, config.repository, scheme=config.origin_scheme,
                                             username=config.username, password=config.password)
                              if config.origin else None)
        self.last_report: tuple[str | None, float] = (None, -float("inf"))  # (what it said, time.monotonic())
        self.origin_skipped = 0  # polls left that ask the mirror for the tag (the origin failed to answer)
        self.status_path = agent.settings.root / "pull-status.json"
        self.status = self._load_status()
        self.rng = random.Random()

    def _load_status(self) -> PullStatus:
        try:
            return PullStatus.model_validate_json(self.status_path.read_bytes())
        except (OSError, ValueError):
            return PullStatus(device=self.config.device)

    def _save(self, **changes) -> None:
        self.status = self.status.model_copy(update=changes)
        write_atomic(self.status_path, self.status.model_dump_json(indent=2).encode())

    # -- the loop ---------------------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.agent.recovery is not None:
            with contextlib.suppress(Exception):  # its failures are the recovery's to report
                await asyncio.shield(self.agent.recovery)  # serve what was on disk first, offline or not
        # Spread the first poll: a fleet that restarts together (a power cut) must not reach the registry at once.
        await asyncio.sleep(self.rng.uniform(0, min(self.status.poll_interval_s or FIRST_POLL_S, 60.0)))
        failures = 0
        while True:
            try:
                await self.poll_once()
                failures = 0
                delay = self.status.poll_interval_s or FIRST_POLL_S
            except RegistryError as e:
                if e.status == 404 and self.status.version == 0:  # enrolled before anything was published for it
                    failures = 0
                    delay = self.status.poll_interval_s or FIRST_POLL_S
                    self._save(checked_at=_now(), outcome="no_state", error=f"nothing published yet: {e.message}")
                    if self.config.report_url:
                        await self.report()
                    await asyncio.sleep(jittered(delay, self.rng))
                    continue
                failures += 1
                delay = backoff_s(failures, self.status.poll_interval_s or FIRST_POLL_S)
                log.warning("pull: registry unreachable or refused (%s); still serving what is active; next try "
                            "in ~%.0f s", e.message, delay)
                self._save(checked_at=_now(), outcome="registry_unreachable", error=e.message)
            except Exception as e:  # the loop must outlive any one poll; the reason is recorded
                log.exception("pull: poll failed")
                self._save(checked_at=_now(), outcome="error", error=f"{type(e).__name__}: {e}")
                delay = self.status.poll_interval_s or FIRST_POLL_S
            if self.config.report_url:
                await self.report()
            await asyncio.sleep(jittered(delay, self.rng))

    def heartbeat_s(self) -> float:
        """The longest this agent goes without a status report: HEARTBEAT_POLLS poll intervals."""
        return HEARTBEAT_POLLS * (self.status.poll_interval_s or FIRST_POLL_S)

    async def report(self) -> None:
        """Push the status report when what it says changed since the last one sent, or when the last one is
        ``heartbeat_s`` old (a failed push is retried at the next poll)."""
        from edgectl_agent.pull_report import push_report, report_changed, report_text

        heartbeat = self.heartbeat_s()
        text = report_text(self.status, self.agent.deployments.snapshot(), heartbeat_s=heartbeat)
        changed = report_changed(text, self.last_report[0], skew_s=self.status.clock_skew_s,
                                 skew_warn_s=CLOCK_SKEW_WARN_S)
        now = time.monotonic()
        if not changed and now - self.last_report[1] < heartbeat * (1 - JITTER):
            return
        facts = await anyio.to_thread.run_sync(self._facts)
        text = report_text(self.status, self.agent.deployments.snapshot(), facts=facts, heartbeat_s=heartbeat)
        if await anyio.to_thread.run_sync(push_report, self.config.report_url, self.config.device, text):
            self.last_report = (changed or self.last_report[0], now)

    def _facts(self):
        """What GET /control/facts would answer (a pull device is never asked: its report carries them)."""
        from edgectl_agent.facts import reported_facts

        try:
            verifier = self.agent.deployments.verifier
            return reported_facts(self.agent.settings.root, self.agent.deployments.benchmarks,
                                  verify_key_id=verifier.fact if verifier is not None else None)
        except Exception:  # noqa: BLE001 - a report without facts still says what serves
            log.exception("pull: cannot collect facts for the status report")
            return None

    async def poll_once(self) -> str:
        """One poll; returns (and records) its outcome: unchanged, applied, refused, stale, failed."""
        tag = state_tag(self.config.device)
        manifest_digest, state_reader = await anyio.to_thread.run_sync(self._tag_digest, tag)
        skew = state_reader.clock_skew_s(_now())
        if skew is not None and abs(skew) > CLOCK_SKEW_WARN_S:
            log.warning("pull: this device's clock is %+.0f s off the registry's; fix its time (NTP): expiry is "
                        "judged by this clock", skew)
        self._save(clock_skew_s=skew)
        if manifest_digest == self.status.manifest_digest:
            if self.status.expires_at is not None and self.status.expires_at <= _now():
                return self._outcome("stale", f"state version {self.status.version} expired at "
                                              f"{self.status.expires_at.isoformat()} and no newer one is published")
            return self._outcome("unchanged", self.status.error if self.status.outcome == "failed" else None,
                                 keep=True)
        try:
            state, state_digest = await anyio.to_thread.run_sync(self._read_state, manifest_digest, state_reader)
            check_state(state, public_key=self.public_key, key_id=self.key_id, device=self.config.device,
                        accepted_version=self.status.version, accepted_digest=self.status.state_digest,
                        digest=state_digest)
            for d in state.deployments:
                if d.artifact.size_bytes > self.config.max_artifact_bytes:
                    limit = self.config.max_artifact_bytes
                    raise StateRefused("size", f"deployment '{d.name}' pins {d.artifact.size_bytes} bytes, more "
                                               f"than this device's max_artifact_bytes {limit}")
        except StateRefused as e:
            log.error("pull: refused state at %s: %s", manifest_digest, e.message)
            if e.kind == "expired":
                skew = self.status.clock_skew_s
                if skew is not None and skew > CLOCK_SKEW_WARN_S:
                    e.message += (f"; this device's clock is {skew:.0f} s ahead of the registry's: set its time "
                                  "(NTP) and it will accept the state")
                return self._outcome("stale", e.message)
            return self._outcome("refused", f"{e.kind}: {e.message}")
        # Trusted now: remember it before acting, so an older state can never be applied after this one.
        self._save(version=state.version, state_digest=state_digest, manifest_digest=manifest_digest,
                   expires_at=state.expires_at, poll_interval_s=state.poll_interval_s)
        try:
            for d in state.deployments:
                await self.fetch(d.artifact)
            for d in state.deployments:
                await self.agent.deployments.activate(d)
            wanted = {d.name for d in state.deployments}
            for s in self.agent.deployments.snapshot():
                if s.name not in wanted and s.state != "removed":
                    await self.agent.deployments.remove(s.name)
        except AgentError as e:
            # The previous artifact keeps serving; the same state is not retried until a new one is published,
            # except for downloads (a cut or corrupt transfer): those retry on the next poll.
            retry = e.type in ("digest_mismatch", "insufficient_storage", "offset_mismatch")
            log.error("pull: state version %d not applied: %s", state.version, e.message)
            if retry:
                self._save(manifest_digest=None)
            return self._outcome("failed", e.message, keep=True)
        log.info("pull: applied state version %d (%d deployments)", state.version, len(state.deployments))
        outcome = self._outcome("applied", None, applied_version=state.version)
        self._save(gates=await self.run_gates(state))  # reported with this poll's outcome
        return outcome

    async def run_gates(self, state: PublishedState) -> dict:
        """Send the smoke request of each gated deployment of ``state`` to this agent itself (edgectl_agent.pull_gate)
        and keep what it found, with the gate's digest, for edgectl to judge. Every applied state is gated, so a
        state that changes only the gate (a Model's golden prompts) is gated again with the new prompts."""
        from edgectl_agent.pull_gate import loopback_base, smoke_request

        serving = {s.name: s for s in self.agent.deployments.snapshot()}
        gate_digests = {d.name: d.health_gate_digest for d in state.deployments}
        base = loopback_base(self.agent.settings.host, self.agent.settings.port)
        gates = dict(self.status.gates)
        for name, smoke in state.gates.items():
            digest = serving[name].active.digest if name in serving and serving[name].active else ""
            report = await anyio.to_thread.run_sync(
                lambda: smoke_request(base, self.agent.token, name, smoke, digest=digest, version=state.version))
            # which gate this was, so that `edgectl diff` sees a device still on an older one
            report = report.model_copy(update={"gate_digest": gate_digests.get(name)})
            if report.error:
                log.warning("pull: the health gate's smoke request to %s failed: %s", name, report.error)
            gates[name] = report
        return gates

    def _outcome(self, outcome: str, error: str | None, *, keep: bool = False, **more) -> str:
        if keep and self.status.outcome in ("failed", "refused", "stale") and outcome == "unchanged":
            outcome = self.status.outcome
        self._save(checked_at=_now(), outcome=outcome, error=error, **more)
        return outcome

    def _tag_digest(self, tag: str) -> tuple[str, RegistryReader]:
        """The state tag's manifest digest, and the reader that answered, which then reads the state too: the
        origin when the config names one (a pull-through mirror forwards every tag lookup there anyway, and a
        device's state is its own, so a mirror has nothing to share: measured in bench/pull_scale.py, the mirror
        path sent the origin 2 to 2.5 requests per poll, this one 1); the registry (the mirror) when there is no origin,
        and for ORIGIN_RETRY_POLLS polls after the origin failed to answer. Whoever answers, the state is verified
        the same way (signature, version, expiry); artifacts always come from the registry."""
        if self.origin_reader is not None and self.origin_skipped == 0:
            try:
                return self.origin_reader.tag_digest(tag), self.origin_reader
            except RegistryError as e:
                if e.status is not None and e.status < 500:  # an answer (404: nothing published, 401): not down
                    raise
                self.origin_skipped = ORIGIN_RETRY_POLLS
                log.warning("pull: the origin registry did not answer (%s); asking the mirror %s for the state "
                            "for the next %d polls", e.message, self.config.registry, ORIGIN_RETRY_POLLS)
        elif self.origin_skipped:
            self.origin_skipped -= 1
        return self.reader.tag_digest(tag), self.reader

    def _read_state(self, manifest_digest: str, reader: RegistryReader | None = None) -> tuple[PublishedState, str]:
        """The state document ``manifest_digest`` names, read through ``reader`` (default: the registry)."""
        reader = reader or self.reader
        manifest, _ = reader.manifest(manifest_digest, limit=MAX_MANIFEST_BYTES)
        layers = [x for x in manifest.get("layers", []) if x.get("mediaType") == STATE_MEDIA_TYPE]
        if len(layers) != 1:
            raise StateRefused("malformed", f"manifest {manifest_digest} has no single {STATE_MEDIA_TYPE} layer")
        layer = layers[0]
        if not isinstance(layer.get("size"), int) or layer["size"] > MAX_STATE_BYTES:
            raise StateRefused("malformed", f"the state layer declares {layer.get('size')} bytes, more than "
                                            f"{MAX_STATE_BYTES}: refused before download")
        data = reader.blob(str(layer.get("digest")), limit=MAX_STATE_BYTES)
        return parse_state(data), str(layer["digest"])

    # -- downloads --------------------------------------------------------------------------------------------
    async def fetch(self, ref: ArtifactRef) -> None:
        """Put ``ref`` into the store (its member files too for a directory artifact), downloading only what is
        missing and never more than its pinned size."""
        store = self.agent.store
        if ref.layout != "tree":
            await self.fetch_blob(ref.digest, ref.size_bytes)
            return
        if not store.has(ref.digest):
            size = await anyio.to_thread.run_sync(self.reader.blob_size, ref.digest)
            if size > MAX_TREE_MANIFEST_BYTES:
                raise AgentError(f"the directory manifest {ref.digest} is {size} bytes: refused", status=422,
                                 type="too_large")
            await self.fetch_blob(ref.digest, size)
        files = store.tree_files(ref.digest)
        if sum(f.size for f in files) != ref.size_bytes:
            raise AgentError(f"directory artifact {ref.digest} lists {sum(f.size for f in files)} bytes, the signed "
                             f"state pins {ref.size_bytes}: refused", status=422, type="size_mismatch")
        for f in store.missing_members(ref.digest):
            await self.fetch_blob(f.sha256, f.size)

    async def fetch_blob(self, digest: str, size: int) -> None:
        store, busy = self.agent.store, self.agent.uploads_in_progress
        if store.has(digest):
            return
        if digest in busy:
            raise AgentError(f"{digest} is being uploaded by edgectl right now", status=409, type="offset_mismatch")
        busy.add(digest)
        try:
            status = store.status(digest)
            offset = status.received_bytes if status.size_bytes == size else 0
            if offset == 0:
                store.discard(digest)
            store.begin(digest, offset, size, None)  # free disk checked here, before any byte
            start, chunks = await anyio.to_thread.run_sync(self.reader.blob_stream, digest, offset)
            if start != offset:  # the registry sent the whole body (no Range support): start over
                store.discard(digest)
                offset = 0
                store.begin(digest, 0, size, None)
            log.info("pull: downloading %s from byte %d of %d", digest, offset, size)
            await store.receive(digest, offset, size, _threaded(chunks))  # a cut read raises RegistryError
            done = await anyio.to_thread.run_sync(store.finish, digest, size)  # sha256 checked; mismatch deleted
            if not done.complete:
                raise RegistryError(f"download of {digest} stopped at {done.received_bytes} of {size} bytes; it "
                                    "resumes there at the next poll")
        finally:
            busy.discard(digest)


async def _threaded(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks of a blocking iterator, each read in a worker thread."""
    end = object()
    while True:
        try:
            chunk = await anyio.to_thread.run_sync(next, chunks, end)
        except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
            raise RegistryError(f"download cut: {e!r}") from None
        if chunk is end:
            return
        yield chunk


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def start_pulling(agent) -> None:
    """The task the app runs in pull mode (``--pull-config``)."""
    config = load_config(agent.settings.pull_config)
    await Puller(agent, config).run()


def pull_status_json(root: Path) -> dict | None:
    """``<root>/pull-status.json`` as a dict, or None when this agent never pulled."""
    try:
        return json.loads((root / "pull-status.json").read_text())
    except (OSError, ValueError):
        return None


__all__ = ["Puller", "backoff_s", "load_config", "start_pulling", "jittered"]
