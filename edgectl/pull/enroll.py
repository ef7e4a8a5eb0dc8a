"""``edgectl enroll DEVICE``: the pull configuration a device's agent needs (edgectl_agent.pull_state.PullConfig).

It names the fleet's registry (or the site mirror of spec.pull.mirrors whose labels the device has, and then the
fleet's registry as ``origin``: the agent polls its state tag there and fetches everything else from the mirror) and
repository,
the read-only credentials from the environment variables ``spec.pull.read_credentials_env`` names, and the public
half of the fleet's signing key; the agent verifies every state and deployment with it. Written with mode 0600 (it
holds a password); copy it to the device and start ``edgectl-agent serve --pull-config FILE``.

``edgectl enroll DEVICE --record`` first writes the device's enrolment record to the registry of the Fleet that lists
its devices from there (:func:`record_enrolment`), so the device exists without editing a manifest.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edgectl_agent.names import NAME_PATTERN
from edgectl_agent.pull_state import PullConfig

from edgectl.errors import NotFoundError, PlanError
from edgectl.pull.mirrors import mirror_for
from edgectl.signing import Signer
from edgectl.spec import Spec


def pull_config(spec: Spec, device: str) -> PullConfig:
    if device not in spec.devices:
        raise NotFoundError(f"no device named '{device}' in the manifests",
                            hint="known devices: " + (", ".join(sorted(spec.devices)) or "(none)"))
    if spec.devices[device].transport.type != "pull":
        raise PlanError(f"device '{device}' is not a pull device (its transport is "
                        f"{spec.devices[device].transport.type}); edgectl reaches it directly",
                        hint="set `transport: {type: pull}` on it (and spec.pull on its Fleet) to make it pull")
    fleet = next(f for f in spec.fleets.values() if any(d.name == device for d in f.spec.devices))
    pull, signing = fleet.spec.pull, fleet.spec.signing
    assert pull is not None and signing is not None  # FleetSpec's validator requires both for pull devices
    signer = Signer.load(Path(signing.key_file).expanduser(), where=spec.sources.get(("Fleet", fleet.name)))
    env = pull.read_credentials_env
    mirror = mirror_for(pull, spec.devices[device])  # a device at a site polls its mirror, not the origin
    registry, plain_http = (mirror.registry, mirror.plain_http) if mirror else (pull.registry, pull.plain_http)
    origin = {"origin": pull.registry, "origin_scheme": "http" if pull.plain_http else "https"} if mirror else {}
    return PullConfig(device=device, registry=registry, repository=pull.repository, **origin,
                      scheme="http" if plain_http else "https",
                      username=os.environ.get(f"{env}_USERNAME"), password=os.environ.get(f"{env}_PASSWORD"),
                      verify_key_pem=signer.public_pem.decode(), report_url=pull.pushgateway)


def write_config(config: PullConfig, path: Path) -> None:
    """Write ``config`` to ``path`` with mode 0600 (replacing an older one atomically)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(config.model_dump_json(indent=2) + "\n")
    os.replace(tmp, path)


def record_enrolment(spec: Spec, device: str, *, fleet: str | None = None, profile: str | None = None,
                     labels: dict[str, str] | None = None) -> str:
    """Write ``device``'s enrolment record to the registry of the Fleet that lists its devices from it
    (``spec.inventory: [{registry: {}}]``, edgectl.inventory.registry) with the publish credentials; returns
    where it went. Checked first, since one bad record would stop every later load of the manifests: the name,
    the profile, and that the device is not already written in a manifest (re-enrolling a recorded device
    replaces its record)."""
    from edgectl.inventory.registry import _client, enrol

    listing = [f for f in spec.fleets.values() if f.spec.pull is not None and any(s.registry for s in f.spec.inventory)]
    if fleet is not None:
        if fleet not in spec.fleets:
            raise NotFoundError(f"no Fleet named '{fleet}' in the manifests",
                                hint="known Fleets: " + (", ".join(sorted(spec.fleets)) or "(none)"))
        listing = [f for f in listing if f.name == fleet]
        if not listing:
            raise PlanError(f"Fleet '{fleet}' ({spec.sources.get(('Fleet', fleet), 'its manifest')}) does not list "
                            "its devices from its registry", hint="add `inventory: [{registry: {}}]` (and spec.pull) "
                                                                  "to its spec, or write the device in the manifest")
    if not listing:
        raise PlanError("no Fleet in the manifests lists its devices from its registry",
                        hint="add `inventory: [{registry: {}}]` and spec.pull to a Fleet's spec, or write the device "
                             "in the manifest")
    if len(listing) > 1:
        raise PlanError(f"{len(listing)} Fleets list their devices from a registry: "
                        + ", ".join(sorted(f.name for f in listing)), hint="name one with --fleet")
    target = listing[0]
    where = spec.sources.get(("Fleet", target.name), f"Fleet '{target.name}'")
    if not re.fullmatch(NAME_PATTERN, device):
        raise PlanError(f"'{device}' is not a valid device name", hint="use lowercase letters, digits, '.', '_' "
                                                                       "and '-', starting and ending with a letter "
                                                                       "or digit, at most 63 characters")
    if profile is not None and profile not in spec.profiles:
        raise NotFoundError(f"no profile named '{profile}'",
                            hint="known profiles: " + ", ".join(sorted(spec.profiles)))
    pull = target.spec.pull
    prefix = next(s.registry for s in target.spec.inventory if s.registry).prefix
    if device in spec.devices:
        client = _client(pull)
        try:
            recorded = client.manifest(prefix + device) is not None
        finally:
            client.close()
        if not recorded:
            raise PlanError(f"device '{device}' is already written in the manifests; a record would name it twice",
                            hint="enrol it under another name, or remove it from the manifest first")
    enrol(pull, device, profile=profile, labels=labels, prefix=prefix)
    return f"{pull.registry}/{pull.repository}:{prefix}{device} (the registry inventory of {where})"
