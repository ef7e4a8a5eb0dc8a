"""``edgectl enroll DEVICE``: the pull configuration a device's agent needs (edgectl_agent.pull_state.PullConfig).

It names the fleet's registry (or the site mirror of spec.pull.mirrors whose labels the device has, and then the
fleet's registry as ``origin``: the agent polls its state tag there and fetches everything else from the mirror) and
repository,
the read-only credentials from the environment variables ``spec.pull.read_credentials_env`` names, and the public
half of the fleet's signing key; the agent verifies every state and deployment with it. Written with mode 0600 (it
holds a password); copy it to the device and start ``edgectl-agent serve --pull-config FILE``.
"""

from __future__ import annotations

import os
from pathlib import Path

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
