"""Signed deployments: the bytes a signature covers, and the agent's check of it.

edgectl signs each DesiredDeployment it sends with an ed25519 key; an agent given the public half
(``--verify-key-file``) activates only deployments signed by it. The signature covers the canonical JSON of every
field but ``signature``, so the artifact's digest too: the agent already refuses bytes that do not hash to that
digest (and a directory artifact's manifest digest pins each member file's sha256), so one signature vouches for
the settings and for the artifact's bytes. Uploads stay unsigned: bytes are inert until a deployment activates them.

``cryptography`` is imported only when a verify key is configured: ``pip install 'edgectl-agent[sign]'``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from edgectl_agent.errors import AgentError, Forbidden

if TYPE_CHECKING:
    from edgectl_agent.api import DesiredDeployment

log = logging.getLogger(__name__)

# Prefixed to the signed bytes so that a deployment signature can never be replayed as a signature over anything
# else edgectl may sign one day.
SIGNED_CONTEXT = b"edgectl-deployment-v1\n"
# Facts.verify_key_id of an agent that is told to verify but cannot load its key (it refuses every activation).
KEY_UNUSABLE = "unusable"
KEYGEN_HINT = "`edgectl keygen PATH` makes a key pair: PATH (private, for the fleet's spec.signing.key_file) and PATH.pub"


def canonical_bytes(desired: DesiredDeployment) -> bytes:
    """What is signed: every field of ``desired`` except ``signature``, as JSON with sorted keys and no
    whitespace, after a fixed context line. edgectl and the agent compute it from the same wire model.
    ``health_gate_digest`` is left out when None, so a deployment signed before it existed verifies unchanged."""
    body = desired.model_dump(mode="json", exclude={"signature"} | (
        {"health_gate_digest"} if desired.health_gate_digest is None else set()))
    return SIGNED_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(raw_public_key: bytes) -> str:
    """A public key's fingerprint: ``sha256:`` + the hex sha256 of its 32 raw bytes."""
    return "sha256:" + hashlib.sha256(raw_public_key).hexdigest()


def _crypto():
    """The ed25519 primitives and serialization of ``cryptography`` (an optional dependency of the agent)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:
        raise AgentError("verifying signatures needs the Python package 'cryptography', which is not installed",
                         hint="pip install 'edgectl-agent[sign]'") from e
    return ed25519, serialization


def load_public_key(path: Path):
    """The ed25519 public key in ``path`` (PEM, as ``edgectl keygen`` writes PATH.pub) and its key id; AgentError
    saying what is wrong otherwise."""
    ed25519, serialization = _crypto()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise AgentError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise AgentError(f"{path} is not a PEM public key ({e})") from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise AgentError(f"{path} holds a {type(key).__name__.lstrip('_')}, not an ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return key, key_id(raw)


class Verifier:
    """The check an agent configured with a verify key file runs on every deployment before it activates or
    recovers it. The key is loaded once, at start; when that fails the agent does not fall back to no
    verification: ``problem`` says why, and every check is refused with it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = None
        self.key_id: str | None = None
        self.problem: str | None = None
        try:
            self.key, self.key_id = load_public_key(path)
        except AgentError as e:
            self.problem = e.message + (f" ({e.hint})" if e.hint else "")
            log.error("verify key %s unusable, every activation will be refused: %s", path, self.problem)
        else:
            log.info("deployments must be signed by key %s (%s)", self.key_id, path)

    @property
    def fact(self) -> str:
        """What Facts.verify_key_id reports: the key id, or KEY_UNUSABLE."""
        return self.key_id or KEY_UNUSABLE

    def check(self, desired: DesiredDeployment) -> None:
        """Return when ``desired`` carries a valid signature by this agent's key; Forbidden (403) otherwise."""
        what = f"deployment '{desired.name}' ({desired.artifact.digest})"
        if self.key is None:
            raise Forbidden(
                f"refusing {what}: this agent must verify signatures with {self.path} but cannot use that key: "
                f"{self.problem}; it refuses every deployment rather than run unverified ones",
                type="verify_key_unavailable",
                hint=f"put the ed25519 public key (PEM) of the fleet's signing key at {self.path} and restart the "
                     f"agent ({KEYGEN_HINT}); or start it without --verify-key-file to turn verification off")
        sig = desired.signature
        if sig is None:
            raise Forbidden(
                f"refusing {what}: it is not signed, and this agent accepts only deployments signed by key "
                f"{self.key_id}", type="signature_missing",
                hint="set spec.signing.key_file in the device's Fleet manifest to the private key of that public key "
                     f"and run `edgectl apply` ({KEYGEN_HINT})")
        if sig.key_id != self.key_id:
            raise Forbidden(
                f"refusing {what}: it is signed by key {sig.key_id}, and this agent accepts only key {self.key_id} "
                f"(from {self.path})", type="signature_invalid",
                hint="sign with the private key this device trusts (the fleet's spec.signing.key_file); if the key "
                     f"changed on purpose, install the new PATH.pub at {self.path} and restart the agent")
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(base64.b64decode(sig.value, validate=True), canonical_bytes(desired))
        except (InvalidSignature, ValueError) as e:
            raise Forbidden(
                f"refusing {what}: its signature by key {sig.key_id} does not match its content: it was changed "
                "after it was signed", type="signature_invalid",
                hint="send the deployment exactly as edgectl signed it; `edgectl apply` signs what it sends") from e
