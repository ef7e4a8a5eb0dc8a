"""Signing deployments with an ed25519 key: ``edgectl keygen``, and the fleet's ``spec.signing.key_file``.

What is signed is defined by the agent (edgectl_agent.signing.canonical_bytes): a DesiredDeployment with every
field but its signature, the artifact's digest included, so one signature vouches for the settings and the bytes.
An agent started with the public half refuses anything else.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgectl_agent.api import ArtifactRef, DeploymentSignature, DesiredDeployment
from edgectl_agent.signing import canonical_bytes, key_id

from edgectl.errors import EdgectlError, NotFoundError
from edgectl.spec import Device, Spec


class SigningError(EdgectlError):
    """A signing key cannot be made or used."""

    exit_code = 2


def _crypto():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519, serialization


def public_key_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def generate_key(path: Path) -> str:
    """Write a new ed25519 private key to ``path`` (PEM, mode 0600) and its public key to ``path``.pub (PEM);
    never overwrites. Returns the key id."""
    ed25519, serialization = _crypto()
    pub_path = public_key_path(path)
    for p in (path, pub_path):
        if p.exists() or p.is_symlink():
            raise SigningError(f"{p} already exists; a key is never overwritten",
                               hint="choose another path, or move the old key away first (deployments signed with it "
                                    "are refused by agents that trust the new one)")
    if not path.parent.is_dir():
        raise SigningError(f"directory {path.parent} does not exist", hint=f"create it first: mkdir -p {path.parent}")
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public = key.public_key()
    public_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(path, private_pem, 0o600)
    _write_new(pub_path, public_pem, 0o644)
    return key_id(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: a file that appeared since the check is not overwritten either; the mode is set at creation.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Signer:
    """A fleet's private key; signs the deployments edgectl sends to its devices."""

    path: Path
    key: object
    key_id: str
    public_pem: bytes

    @classmethod
    def load(cls, path: Path, *, where: str | None = None) -> "Signer":
        """The ed25519 private key in ``path`` (PEM, unencrypted, not readable by group or others)."""
        ed25519, serialization = _crypto()
        fix = f"make a key with `edgectl keygen {path}` or point spec.signing.key_file at one"
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as e:
            raise SigningError(f"cannot read the signing key {path}: {e.strerror or e}", where=where, hint=fix) from e
        if mode & 0o077:
            raise SigningError(f"the signing key {path} is readable by others (mode {stat.filemode(mode)})",
                               where=where, hint=f"chmod 600 {path}")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as e:  # encrypted
            raise SigningError(f"the signing key {path} is encrypted; edgectl needs an unencrypted key file",
                               where=where, hint="protect it with its file mode (0600) instead; " + fix) from e
        except ValueError as e:
            raise SigningError(f"{path} is not a PEM private key ({e})", where=where, hint=fix) from e
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise SigningError(f"{path} is not an ed25519 key", where=where, hint=fix)
        public = key.public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(path=path, key=key, key_id=key_id(raw), public_pem=pem)

    def sign(self, desired: DesiredDeployment) -> DesiredDeployment:
        unsigned = desired.model_copy(update={"signature": None})
        value = base64.b64encode(self.key.sign(canonical_bytes(unsigned))).decode()
        return unsigned.model_copy(update={"signature": DeploymentSignature(key_id=self.key_id, value=value)})

    def verifies(self, desired: DesiredDeployment) -> bool:
        """True when ``desired`` carries this key's valid signature."""
        from cryptography.exceptions import InvalidSignature

        sig = desired.signature
        if sig is None or sig.key_id != self.key_id:
            return False
        try:
            self.key.public_key().verify(base64.b64decode(sig.value), canonical_bytes(desired))
        except (InvalidSignature, ValueError):
            return False
        return True


def signed(signer: Signer | None, desired: DesiredDeployment) -> DesiredDeployment:
    return signer.sign(desired) if signer is not None else desired


def signers_for(spec: Spec, devices: Iterable[Device]) -> dict[str, Signer | None]:
    """Per device, its fleet's Signer (None when the fleet has no ``spec.signing``). Every key is loaded now, so a
    bad key stops the run before anything changes."""
    by_fleet: dict[str, Signer | None] = {}
    fleet_of = {d.name: f for f in spec.fleets.values() for d in f.spec.devices}
    out: dict[str, Signer | None] = {}
    for device in devices:
        fleet = fleet_of[device.name]
        if fleet.name not in by_fleet:
            signing = fleet.spec.signing
            by_fleet[fleet.name] = None if signing is None else Signer.load(
                Path(signing.key_file).expanduser(), where=spec.sources.get(("Fleet", fleet.name)))
        out[device.name] = by_fleet[fleet.name]
    return out


def rollback_deployment(desired: DesiredDeployment, artifact: ArtifactRef, *, signer: Signer | None,
                        store) -> DesiredDeployment:
    """``desired``'s settings with ``artifact``: what returns a device to an artifact it served before.

    Both come from the device, so edgectl signs the result only when the settings carry this key's valid signature
    and the artifact is one it built (in its local store): a device cannot make edgectl sign settings or bytes
    that edgectl did not make. Otherwise the result goes unsigned, and an agent that requires signatures refuses
    it."""
    if desired.artifact == artifact:
        return desired  # as the device holds it, its signature intact
    target = desired.model_copy(update={"artifact": artifact, "signature": None})
    if signer is None or not signer.verifies(desired):
        return target
    try:
        built = store.find(artifact.digest)
    except NotFoundError:
        return target
    ours = ArtifactRef(digest=built.digest, format=built.format, quant=built.quant, size_bytes=built.size_bytes,
                       model=built.model, layout=built.layout)
    return signer.sign(target) if ours == artifact else target
