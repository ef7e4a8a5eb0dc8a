"""Site mirrors declared in the manifest (spec.pull.mirrors), for real: a real Distribution registry as the origin
and the site mirror as deploy/site-mirror/ ships it (a second Distribution in proxy mode whose upstream is a real
nginx caching the origin's blobs: tests/site_mirror.py), and the real `edgectl` CLI.

`edgectl apply` warms the mirror with the new artifact before it publishes the states that pin it, so the devices
that then download at the same moment cost the origin nothing, and the warm itself costs it exactly one copy
(Distribution 2.8's proxy fetches a missed blob twice, once to answer and once to store: the nginx cache's
proxy_cache_lock turns both into one origin fetch); `edgectl enroll` points a site's device at its mirror and the
other devices at the origin. (A mirror edgectl cannot reach: tests/unit/test_pull_mirrors.py.)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.test_pull_registry import PullWorld, edgectl
from tests.registry import Registry
from tests.site_mirror import OriginCache, site_mirror_registry
from tests.tinymodels import pull_fleet_manifest

pytestmark = pytest.mark.integration
SITE = ["mirror-shop-1", "mirror-shop-2"]
ELSEWHERE = "mirror-shop-far"
BLOB_GET = re.compile(r'"GET /v2/shops/models/blobs/(sha256:[0-9a-f]{64}) HTTP/[\d.]+" (\d{3}) (\d+)')


def origin_blob_gets(log: Path, digest: str) -> list[tuple[int, int]]:
    """(status, bytes sent) of every GET of blob ``digest`` in the origin's access log."""
    return [(int(m.group(2)), int(m.group(3))) for m in BLOB_GET.finditer(log.read_text(errors="replace"))
            if m.group(1) == digest]


def test_apply_warms_the_site_mirror_so_its_devices_cost_the_origin_nothing(tmp_path, start_agent):
    from edgectl_agent.oci import RegistryReader

    world = PullWorld(tmp_path)  # its htpasswd registry is unused here: the origin below is anonymous
    world.registry.stop()
    # Anonymous origin: Distribution 2.8's proxy mode sends upstream credentials only to a token-auth registry.
    origin = Registry(tmp_path / "origin", {}).start()
    cache = OriginCache(tmp_path / "origin-cache", f"http://{origin.address}").start()
    mirror = site_mirror_registry(tmp_path / "mirror", cache).start()
    try:
        mirrors = f', mirrors: [{{registry: "{mirror.address}", plain_http: true, labels: {{site: shop-a}}}}]'
        (world.dir / "all.yaml").write_text(pull_fleet_manifest(
            origin.address, [*SITE, ELSEWHERE], quant="Q8_0", pull_extra=mirrors,
            labels={d: {"site": "shop-a"} for d in SITE}))
        out = edgectl("apply", str(world.dir), env=world.env)
        said = " ".join((out.stdout + out.stderr).split())
        assert f"site mirror {mirror.address}/shops/models: 1 of 1 blobs fetched from the origin now" in said, said

        reader = RegistryReader(mirror.address, "shops/models", scheme="http")
        state = json.loads(reader.blob(reader.manifest(reader.tag_digest(f"state-{SITE[0]}"),
                                                       limit=1 << 20)[0]["layers"][0]["digest"], limit=1 << 20))
        artifact = state["deployments"][0]["artifact"]
        digest, size = artifact["digest"], artifact["size_bytes"]
        warmed = origin_blob_gets(origin.log, digest)
        # Distribution 2.8's proxy answers a miss from one upstream fetch and stores the blob with a second: both
        # reach the nginx cache, which asks the origin once.
        assert warmed == [(200, size)], warmed

        def device_download(i: int) -> str:  # every device of the site at the same moment, as after a publish
            r = RegistryReader(mirror.address, "shops/models", scheme="http")
            _, chunks = r.blob_stream(digest, 0)
            return "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(device_download, range(8))) == {digest}
        assert origin_blob_gets(origin.log, digest) == warmed  # the devices cost the origin nothing

        site = json.loads(edgectl("enroll", SITE[0], "-f", str(world.dir), env=world.env).stdout)
        far = json.loads(edgectl("enroll", ELSEWHERE, "-f", str(world.dir), env=world.env).stdout)
        assert (site["registry"], site["scheme"]) == (mirror.address, "http")
        assert far["registry"] == origin.address
        assert_site_device_reads_its_state_at_the_origin(site, origin, mirror, tmp_path)
        assert_a_site_agent_started_while_the_origin_is_down_serves_from_the_mirror(site, origin, tmp_path,
                                                                                    start_agent, digest)

    finally:
        mirror.stop()
        cache.stop()
        origin.stop()


def assert_site_device_reads_its_state_at_the_origin(site: dict, origin: Registry, mirror: Registry, tmp: Path) -> None:
    """A site device's agent (its Puller, from the config `edgectl enroll` wrote) reads its own state at the origin,
    where the mirror would forward the tag lookup anyway; while the origin is down, through the mirror."""
    from types import SimpleNamespace

    from edgectl_agent.pull import ORIGIN_RETRY_POLLS, Puller
    from edgectl_agent.pull_state import PullConfig

    assert (site["origin"], site["origin_scheme"]) == (origin.address, "http")
    agent = SimpleNamespace(settings=SimpleNamespace(root=tmp / "site-device"), store=None, uploads_in_progress=set(),
                            recovery=None, deployments=None)
    (tmp / "site-device").mkdir()
    puller = Puller(agent, PullConfig.model_validate(site))
    tag = f"state-{site['device']}"
    mirror_heads = mirror.log.read_text(errors="replace").count(f'"HEAD /v2/shops/models/manifests/{tag} ')
    digest, reader = puller._tag_digest(tag)
    assert reader is puller.origin_reader
    state, _ = puller._read_state(digest, reader)
    assert state.deployments and mirror.log.read_text(errors="replace").count(
        f'"HEAD /v2/shops/models/manifests/{tag} ') == mirror_heads  # the mirror was not asked

    origin.stop()  # the origin unreachable: the mirror answers from what it keeps, for the next polls too
    try:
        digest_down, reader = puller._tag_digest(tag)
        assert reader is puller.reader and digest_down == digest
        assert puller._read_state(digest_down, reader)[0].version == state.version
        assert puller.origin_skipped == ORIGIN_RETRY_POLLS
    finally:
        origin.start()


def assert_a_site_agent_started_while_the_origin_is_down_serves_from_the_mirror(
        site: dict, origin: Registry, tmp: Path, start_agent, artifact_digest: str) -> None:
    """A real agent process (re)started at the site while the origin is unreachable: its state (signed, checked) and
    its artifact come from the mirror, it serves, and its log says it asked the mirror for the state."""
    from tests.integration.test_pull_registry import chat, pull_status, serving_digest, wait_for

    config = tmp / "site-pull.json"
    config.write_text(json.dumps(site))
    config.chmod(0o600)
    origin.stop()
    try:
        root = tmp / "site-agent"
        agent = start_agent(root=root, env={"EDGECTL_AGENT_PULL_CONFIG": str(config)})
        assert wait_for("the site agent to serve from the mirror", lambda: serving_digest(agent)) == artifact_digest
        assert chat(agent)["choices"][0]["message"]["role"] == "assistant"
        assert pull_status(root)["applied_version"] >= 1
        said = agent.log.read_text(errors="replace")
        assert "the origin registry did not answer" in said and f"asking the mirror {site['registry']}" in said, said
    finally:
        origin.start()


def test_the_shipped_site_mirror_costs_the_origin_one_copy_of_a_small_blob_warmed_or_not(tmp_path):
    """A 1 MiB blob (small enough to sit whole in the socket buffers, where Distribution 2.8 alone sent it twice):
    warmed as `edgectl apply` does, then fetched by 8 devices at once, the origin sends it exactly once; a second one
    never warmed, fetched by 8 devices at once through the cold mirror, once too."""
    from edgectl.apply.report import Events
    from edgectl.pull.mirrors import warm_mirror
    from edgectl.pull.oci import RegistryWriter
    from edgectl_agent.oci import RegistryReader

    origin = Registry(tmp_path / "origin", {}).start()
    cache = OriginCache(tmp_path / "origin-cache", f"http://{origin.address}").start()
    mirror = site_mirror_registry(tmp_path / "mirror", cache).start()
    try:
        publisher = RegistryWriter(origin.address, "shops/models", plain_http=True)
        warmed, _ = publisher.push_blob_bytes(b"w" + os.urandom(1 << 20))
        cold, _ = publisher.push_blob_bytes(b"c" + os.urandom(1 << 20))
        publisher.close()
        size = (1 << 20) + 1

        client = RegistryWriter(mirror.address, "shops/models", plain_http=True)
        result = warm_mirror(client, [warmed], Events())
        client.close()
        assert (result.error, result.fetched, result.bytes) == (None, 1, size), result

        def devices_fetch(digest: str) -> set[str]:  # 8 devices of the site at the same moment
            def one(_: int) -> str:
                _, chunks = RegistryReader(mirror.address, "shops/models", scheme="http").blob_stream(digest, 0)
                return "sha256:" + hashlib.sha256(b"".join(chunks)).hexdigest()
            with ThreadPoolExecutor(max_workers=8) as pool:
                return set(pool.map(one, range(8)))
        assert devices_fetch(warmed) == {warmed}
        assert devices_fetch(cold) == {cold}
        for digest in (warmed, cold):
            gets = origin_blob_gets(origin.log, digest)
            assert gets == [(200, size)], f"{digest}: the origin sent {gets} (want one copy of {size} bytes)"
    finally:
        mirror.stop()
        cache.stop()
        origin.stop()
