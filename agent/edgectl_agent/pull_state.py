"""Pull mode's wire formats: the signed desired state edgectl publishes per device, and the agent's pull config.

The desired state is modelled on The Update Framework's (TUF) timestamp/targets metadata, with the same checks
implemented here rather than through python-tuf (one document per device, one ed25519 key: TUF's role delegation
and threshold signing would be unused weight on a device):

- **signature**: ed25519 by the fleet's key (edgectl's ``spec.signing``) over the canonical JSON of every other
  field, after its own context line, so it can never be replayed as a deployment signature or vice versa;
- **monotonic version**: the agent keeps the highest version it accepted and refuses a lower one, validly signed
  or not (rollback attack), and a different document under the same version;
- **expiry**: a state past ``expires_at`` is not applied and is reported as stale (freeze attack: a registry or
  mirror that keeps serving an old state);
- **pinned digests and sizes**: each deployment's artifact digest and size are in the signed document (and each
  DesiredDeployment is signed on its own, so the agent's normal activation check applies too); the agent never
  downloads more than the pinned size, and refuses bytes that do not hash to the digest.

edgectl imports this module to write and sign states; the agent verifies them. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from edgectl_agent.api import DesiredDeployment, Wire
from edgectl_agent.names import NAME_PATTERN

STATE_CONTEXT = b"edgectl-pull-state-v1\n"
# OCI media types of the state document (a one-layer artifact under the tag ``state-<device>``).
STATE_ARTIFACT_TYPE = "application/vnd.edgectl.state.v1+json"
STATE_MEDIA_TYPE = "application/vnd.edgectl.state.v1+json"
# A state names a handful of deployments: anything bigger is refused before it is read (endless data).
MAX_STATE_BYTES = 256 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024


def state_tag(device: str) -> str:
    """The registry tag of ``device``'s desired state."""
    return f"state-{device}"


class StateSignature(Wire):
    key_id: str = Field(description="sha256 fingerprint of the signing public key (edgectl_agent.signing.key_id).")
    value: str = Field(description="ed25519 signature, base64, over state_bytes() of the document.")


class GoldenAsk(Wire):
    """One more prompt of a health gate (a model's golden prompt); edgectl checks its answer."""

    prompt: str = Field(max_length=4000, description="The user message sent.")
    max_tokens: int = Field(default=24, ge=1, le=256, description="Tokens it generates.")


class SmokeRequest(Wire):
    """The smoke request the agent sends itself after applying a state (the deployment's health gate); edgectl
    judges what it reports with the same gate rule as for push devices (edgectl.apply.rollout.gate_problems)."""

    kind: str = Field(default="llm", description="llm: a streamed chat completion with the agent's timings; "
                                                 "anything else: the KServe readiness endpoint.")
    prompt: str = Field(default="Say hello.", max_length=4000, description="The user message sent.")
    max_tokens: int = Field(default=8, ge=1, le=256, description="Tokens it generates.")
    more: list[GoldenAsk] = Field(default_factory=list, max_length=16,
                                  description="The model's other golden prompts, asked after it in order (LLMs); their "
                                              "answers are reported in GateReport.answers for edgectl to judge.")

    @model_serializer(mode="wrap")
    def _without_empty_more(self, handler: SerializerFunctionWrapHandler) -> dict:
        # left out when empty, so a state without extra prompts is the same document (and signature) as before
        data = handler(self)
        if not self.more:
            data.pop("more", None)
        return data


class GateReport(Wire):
    """What the smoke request after applying ``version`` found, reported outward (edgectl_agent.pull_report)."""

    digest: str = Field(description="The artifact serving when the request was sent.")
    version: int = Field(description="The state version it was sent for.")
    ttft_s: float | None = Field(default=None, description="Time to first token, the agent's own timing.")
    tokens: int | None = Field(default=None, description="Tokens generated.")
    decode_s: float | None = Field(default=None, description="Decode time of those tokens.")
    answer: str | None = Field(default=None, description="The answer's text (first 1000 characters).")
    answers: list[str] = Field(default_factory=list, description="The answers to SmokeRequest.more, in order (first "
                                                                 "1000 characters each).")
    error: str | None = Field(default=None, description="Why the request failed (None: it answered).")
    gate_digest: str | None = Field(default=None, description="The health gate it was sent for: the deployment's "
                                                              "DesiredDeployment.health_gate_digest in that state "
                                                              "(None: edgectl sent none).")


class PublishedState(Wire):
    """The desired state of one pull device, as edgectl publishes it."""

    device: str = Field(pattern=NAME_PATTERN, description="The device this state is for; an agent refuses a state "
                                                          "addressed to another device.")
    version: int = Field(ge=1, description="Monotonic: each publish for this device increments it; an agent refuses "
                                           "one lower than it has accepted (rollback).")
    issued_at: datetime = Field(description="When edgectl signed it (UTC).")
    expires_at: datetime = Field(description="After this the state is stale: not applied, reported (freeze).")
    poll_interval_s: int = Field(ge=5, le=86_400, description="How often the agent checks for a new state "
                                                              "(with +-20% jitter).")
    deployments: list[DesiredDeployment] = Field(description="What the device serves; each is signed on its own "
                                                             "too. A deployment absent here is removed.")
    gates: dict[str, SmokeRequest] = Field(default_factory=dict, description="Per deployment: the smoke request "
                                           "the agent sends itself once the state is applied, and reports.")
    signature: StateSignature | None = Field(default=None, description="The fleet key's signature.")


def state_bytes(state: PublishedState) -> bytes:
    """What a state signature covers: a context line, then every field but ``signature`` as canonical JSON."""
    # ``gates`` is left out when empty, so a state signed before it existed verifies unchanged.
    body = state.model_dump(mode="json", exclude={"signature"} | ({"gates"} if not state.gates else set()))
    return STATE_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def document_bytes(state: PublishedState) -> bytes:
    """The bytes stored in the registry (canonical JSON, signature included)."""
    body = state.model_dump(mode="json", exclude=set() if state.gates else {"gates"})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class StateRefused(Exception):
    """A published state the agent will not apply. ``kind``: signature, device, rollback, expired, malformed."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


def parse_state(data: bytes) -> PublishedState:
    if len(data) > MAX_STATE_BYTES:
        raise StateRefused("malformed", f"the state document has {len(data)} bytes, more than {MAX_STATE_BYTES}")
    try:
        return PublishedState.model_validate_json(data)
    except ValueError as e:
        raise StateRefused("malformed", f"the state document is not a valid edgectl state: {e}") from None


def check_state(state: PublishedState, *, public_key, key_id: str, device: str, accepted_version: int,
                accepted_digest: str | None, digest: str, now: datetime | None = None) -> None:
    """Return when ``state`` may be applied on ``device``; StateRefused saying why otherwise.

    ``public_key``: the fleet's ed25519 public key (cryptography object); ``accepted_version`` and
    ``accepted_digest``: the highest version this agent applied and the digest of that document; ``digest``: the
    sha256 of this document's bytes."""
    from cryptography.exceptions import InvalidSignature

    sig = state.signature
    if sig is None:
        raise StateRefused("signature", f"state version {state.version} is not signed")
    if sig.key_id != key_id:
        raise StateRefused("signature", f"state version {state.version} is signed by key {sig.key_id}, this agent "
                                        f"trusts only {key_id}")
    try:
        public_key.verify(base64.b64decode(sig.value, validate=True), state_bytes(state))
    except (InvalidSignature, ValueError):
        raise StateRefused("signature", f"the signature of state version {state.version} does not match its "
                                        "content: it was changed after it was signed") from None
    if state.device != device:
        raise StateRefused("device", f"the state is addressed to device '{state.device}', this is '{device}'")
    if state.version < accepted_version:
        raise StateRefused("rollback", f"state version {state.version} is older than version {accepted_version} "
                                       "already applied: a replayed old state (rollback attack) is refused")
    if state.version == accepted_version and accepted_digest is not None and digest != accepted_digest:
        raise StateRefused("rollback", f"a different document claims version {state.version}, which this agent "
                                       "already applied: refused")
    now = now or datetime.now(timezone.utc)
    if state.expires_at <= now:
        raise StateRefused("expired", f"state version {state.version} expired at {state.expires_at.isoformat()} "
                                      f"(now {now.isoformat()}): the registry serves a stale state (freeze attack, "
                                      "or edgectl has not published for too long)")


def new_state(device: str, version: int, deployments: list[DesiredDeployment], *, poll_interval_s: int,
              valid_for: timedelta, now: datetime | None = None,
              gates: dict[str, SmokeRequest] | None = None) -> PublishedState:
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    return PublishedState(device=device, version=version, issued_at=now, expires_at=now + valid_for,
                          poll_interval_s=poll_interval_s, deployments=deployments, gates=gates or {})


class PullConfig(Wire):
    """What ``edgectl enroll DEVICE`` writes and ``edgectl-agent serve --pull-config FILE`` reads."""

    device: str = Field(pattern=NAME_PATTERN, description="This device's name in the fleet.")
    registry: str = Field(description="Registry host[:port], e.g. registry.example.com or 127.0.0.1:5000.")
    repository: str = Field(description="Repository holding the fleet's artifacts and states.")
    scheme: Literal["https", "http"] = Field(default="https", description="http only for a registry on loopback "
                                                                          "or a test.")
    origin: str | None = Field(default=None, description="The fleet's registry host[:port] when ``registry`` is a "
                               "site mirror (a pull-through cache): the device's state (tag, manifest, document) is "
                               "read there, since the mirror forwards every tag lookup to it anyway and a state is "
                               "one device's own; through the mirror while the origin cannot be reached. Artifacts "
                               "always come from ``registry``.")
    origin_scheme: Literal["https", "http"] = Field(default="https", description="``scheme`` for ``origin``.")
    username: str | None = Field(default=None, description="Read-only registry user.")
    password: str | None = Field(default=None, description="Its password or token.")
    verify_key_pem: str = Field(description="The fleet's ed25519 public key (PEM) that states must be signed with.")
    report_url: str | None = Field(default=None, description="Prometheus Pushgateway base URL the agent reports "
                                                             "its status to after every poll (None: no report).")
    max_artifact_bytes: int = Field(default=64 * 1024 ** 3, ge=1,
                                    description="Largest artifact this device downloads, whatever a state pins.")


class PullStatus(Wire):
    """What the agent's pull loop last did (``<root>/pull-status.json``)."""

    device: str = Field(description="This device.")
    checked_at: datetime | None = Field(default=None, description="When the registry was last polled.")
    outcome: str | None = Field(default=None, description="unchanged, applied, refused, stale, failed, "
                                                          "registry_unreachable, error or no_state (nothing "
                                                          "published for it yet).")
    error: str | None = Field(default=None, description="Why, when the outcome is not a success.")
    version: int = Field(default=0, description="Highest state version accepted (0: none yet).")
    applied_version: int = Field(default=0, description="Highest state version fully applied.")
    state_digest: str | None = Field(default=None, description="Digest of the accepted state document.")
    manifest_digest: str | None = Field(default=None, description="Manifest digest of the accepted state's tag.")
    expires_at: datetime | None = Field(default=None, description="When the accepted state expires.")
    poll_interval_s: int | None = Field(default=None, description="Poll interval the accepted state sets.")
    gates: dict[str, GateReport] = Field(default_factory=dict, description="Per deployment: the last smoke "
                                                                           "request's result.")
    clock_skew_s: float | None = Field(default=None, description="This device's clock minus the registry's (its "
                                                                 "HTTP Date header) at the last poll.")
