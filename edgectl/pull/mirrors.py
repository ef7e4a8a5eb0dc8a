"""Site mirrors (spec.pull.mirrors): which mirror a pull device polls, and warming a mirror before a publish.

A site mirror is a registry in pull-through (proxy) mode in front of the fleet's registry, at a site whose devices
poll it (``edgectl enroll`` writes its address into their pull config). Left cold, it fills on the devices' first
requests. So ``edgectl apply`` warms it: after the artifacts are on the origin and before any state that pins them is
published, every blob of every artifact the site's devices are about to get is fetched through the mirror once, one
after another (``RegistryWriter.warm_blob``: a blob the mirror already holds costs one 1-byte ranged GET; for one it
lacks, the mirror's first answer is closed after its headers, then the mirror is probed until it serves the blob from
its own storage). When the site's devices see their new state, the mirror holds the artifact.

What the origin sends for that depends on the mirror. The one edgectl ships (deploy/site-mirror/: Distribution in
proxy mode whose upstream is an nginx cache with ``proxy_cache_lock``) costs it exactly one copy per blob, warmed or
not. A bare Distribution 2.8 proxy fetches a missed blob twice (once to answer, once to store) and once more per
request that misses while a fetch runs: the warm's early close saves the answering copy only for a blob larger than
what the sockets buffer (bench/pull_scale.py --warm-sizes --mirror distribution). The probe works with both: the
devices talk to the Distribution either way.

A mirror edgectl cannot reach (a shop LAN) is set ``warm: false``; a warm that fails is reported and the publish
goes on (the devices still get their artifacts, through the mirror filling on demand).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgectl.apply.report import Events
from edgectl.builders import ArtifactStore
from edgectl.errors import EdgectlError
from edgectl.pull.oci import RegistryWriter
from edgectl.spec import BuiltArtifact, Device
from edgectl.spec.fleet import PullRegistry, SiteMirror


def mirror_for(pull: PullRegistry, device: Device) -> SiteMirror | None:
    """The first of ``pull.mirrors`` whose labels ``device`` all has; None: it polls ``pull.registry``."""
    return next((m for m in pull.mirrors if all(device.labels.get(k) == v for k, v in m.labels.items())), None)


def artifact_blobs(store: ArtifactStore, art: BuiltArtifact) -> list[str]:
    """The blob digests a device fetches for ``art``: the file, or a directory's tree manifest and members."""
    if art.layout == "tree":
        return [art.digest, *(f.sha256 for f in store.tree_files(art.digest))]
    return [art.digest]


@dataclass
class WarmResult:
    mirror: str
    blobs: int = 0
    fetched: int = 0  # blobs the mirror did not hold yet (fetched from the origin now)
    bytes: int = 0
    error: str | None = None


def mirror_reader(pull: PullRegistry, mirror: SiteMirror) -> RegistryWriter:
    """A client of ``mirror`` for the fleet's repository, with the publish credentials (a mirror in front of a
    registry with auth asks for them like the origin does)."""
    env = pull.credentials_env
    return RegistryWriter(mirror.registry, pull.repository, plain_http=mirror.plain_http,
                          username=os.environ.get(f"{env}_USERNAME"), password=os.environ.get(f"{env}_PASSWORD"))


def warm_mirror(client: RegistryWriter, digests: list[str], events: Events) -> WarmResult:
    """Fetch each of ``digests`` through the mirror ``client`` talks to, one after another (see the module)."""
    result = WarmResult(client.where)
    try:
        for digest in dict.fromkeys(digests):  # in order, once each
            read = client.warm_blob(digest)
            result.blobs += 1
            if read:
                result.fetched += 1
                result.bytes += read
    except EdgectlError as e:
        result.error = e.message + (f" ({e.hint})" if e.hint else "")
        events.info(None, f"warning: could not warm site mirror {client.where}: {result.error}; its devices fill it "
                          "on demand (the origin may send an artifact more than once)")
        return result
    events.info(None, f"site mirror {client.where}: {result.fetched} of {result.blobs} blobs fetched from the origin "
                      f"now ({result.bytes} bytes), the rest already there")
    return result


def warm_site_mirrors(pulls: dict[str, tuple[PullRegistry, list[Device]]], wanted: dict[str, list[str]],
                      events: Events) -> list[WarmResult]:
    """Warm every mirror that some of ``pulls``' devices poll, with the blobs ``wanted[device]`` of its devices.
    ``pulls``: fleet name -> (its spec.pull, its pull devices being published)."""
    results = []
    for pull, devices in pulls.values():
        for mirror in pull.mirrors:
            if not mirror.warm:
                continue
            digests = [d for dev in devices if mirror_for(pull, dev) is mirror for d in wanted.get(dev.name, [])]
            if not digests:
                continue
            client = mirror_reader(pull, mirror)
            try:
                results.append(warm_mirror(client, digests, events))
            finally:
                client.close()
    return results
