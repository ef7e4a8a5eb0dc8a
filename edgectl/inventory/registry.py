"""Pull devices enrolled in the fleet's registry, as an inventory source (``spec.inventory: [{registry: {}}]``).

An enrolment record is a tiny OCI artifact in the fleet's repository (spec.pull.repository) under the tag
``<prefix><device name>`` (prefix ``device-`` by default): artifact type ``application/vnd.edgectl.device.v1``, the
OCI empty blob as config and layer, and the device's profile and labels as annotations (``dev.edgectl.profile``,
``dev.edgectl.labels``: a JSON object). :func:`enrol` writes one (a provisioning pipeline can do the same with
``oras push``); :func:`read_registry` lists the tags through the tags/list API, page by page, and reads each
record's manifest (16 at a time), in the order of the names. Every record becomes a pull device, checked like a
device written in the manifest (the source's ``profile`` and ``labels`` fill in and add, names unique across the
fleet), an error naming the registry, repository and tag.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from edgectl.errors import SpecError
from edgectl.inventory.rows import Row
from edgectl.spec.fleet import PullRegistry, RegistryInventory

RECORD_TYPE = "application/vnd.edgectl.device.v1"
EMPTY = "application/vnd.oci.empty.v1+json"
PROFILE = "dev.edgectl.profile"
LABELS = "dev.edgectl.labels"
READERS = 16
PAGE = 1000  # tags per tags/list request


class RegistryRow(Row):
    """A device read from an enrolment record: ``file`` names the registry, repository and tag."""

    @property
    def where(self) -> str:
        return self.file


def _client(pull: PullRegistry):
    from edgectl.pull.oci import RegistryWriter  # httpx: only for fleets that list their devices this way

    env = pull.credentials_env
    return RegistryWriter(pull.registry, pull.repository, plain_http=pull.plain_http,
                          username=os.environ.get(f"{env}_USERNAME"), password=os.environ.get(f"{env}_PASSWORD"))


def enrol(pull: PullRegistry, name: str, *, profile: str | None = None, labels: dict[str, str] | None = None,
          prefix: str = RegistryInventory().prefix) -> str:
    """Write ``name``'s enrolment record to the fleet's repository (publish credentials); returns its digest."""
    client = _client(pull)
    try:
        empty, size = client.push_blob_bytes(b"{}")
        annotations = {LABELS: json.dumps(labels or {}, sort_keys=True)}
        if profile:
            annotations[PROFILE] = profile
        return client.push_manifest({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                     "artifactType": RECORD_TYPE,
                                     "config": {"mediaType": EMPTY, "digest": empty, "size": size},
                                     "layers": [{"mediaType": EMPTY, "digest": empty, "size": size}],
                                     "annotations": annotations}, prefix + name)
    finally:
        client.close()


def read_registry(source: RegistryInventory, pull: PullRegistry | None, entry, errors: list[SpecError]) -> list[Row]:
    """The devices enrolled in ``pull``'s repository. ``entry()``: where the manifest names this source."""
    from edgectl.errors import EdgectlError

    if pull is None:
        errors.append(SpecError("an inventory source 'registry' lists the pull devices enrolled in spec.pull's "
                                "repository, but this fleet has no spec.pull", where=entry(),
                                hint="add spec.pull (registry, repository) to the fleet, or list the devices in "
                                     "a file"))
        return []
    client = _client(pull)
    try:
        names = sorted(t[len(source.prefix):] for t in client.tags(page=PAGE) if t.startswith(source.prefix))
        with ThreadPoolExecutor(max_workers=READERS) as pool:
            manifests = list(pool.map(lambda n: client.manifest(source.prefix + n), names))
    except EdgectlError as e:
        errors.append(SpecError(f"cannot list the devices enrolled in {client.where}: {e.message}", where=entry(),
                                hint=e.hint or "check spec.pull and the registry"))
        return []
    finally:
        client.close()
    rows: list[Row] = []
    for name, manifest in zip(names, manifests):
        where = f"registry {client.where}, tag {source.prefix}{name}"
        if manifest is None:  # deleted between the listing and the read
            continue
        annotations = manifest.get("annotations") or {}
        try:
            labels = json.loads(annotations.get(LABELS) or "{}")
            if not isinstance(labels, dict):
                raise ValueError("not an object")
        except ValueError:
            errors.append(SpecError(f"the enrolment record's annotation {LABELS} is not a JSON object",
                                    where=where, hint="enrol the device again (edgectl.inventory.registry.enrol)"))
            continue
        data = {"name": name, "transport": {"type": "pull"}, "labels": labels}
        if annotations.get(PROFILE):
            data["profile"] = annotations[PROFILE]
        rows.append(RegistryRow(data, where, 1, {"profile": PROFILE, "labels": LABELS}))
    return rows
