"""Pull mode at fleet scale: N simulated pull devices against one real registry, with and without a site mirror.

    python bench/pull_scale.py [--devices 1000] [--poll 10] [--blob-mib 1] [--timeout 300] [--no-write]

Real parts: Debian's docker-registry (CNCF Distribution) as the origin on 127.0.0.1 (anonymous: Distribution 2.8's
proxy mode logs in upstream only to a token-auth registry), a second one in proxy mode as the site mirror, and
Prometheus's Pushgateway for the status reports. The devices are lightweight asyncio pollers (one httpx client, a
bounded connection pool) doing the agent's real HTTP: per poll a manifest HEAD of ``state-<device>`` (OCI Accept
header); on a new digest the manifest GET by digest, the state blob GET, the artifact blob in two ranged GETs (a
cold mirror answers 200 with the whole body: taken as such), sha256 checked; then a status report PUT to the
Pushgateway, after every poll (the agent's own report text). What they skip: signatures (no crypto in the loop),
the store, model loading.

Measured per run: time from the start of the publish (N new state documents plus one new artifact) until 99% of the
devices reported the new digest; registry requests/s and p99 latency as the devices saw them (the registry they
talk to: origin or mirror); requests and bytes that left the origin, counted from the origin's own access log.
Targets (issue 17): 99% within two poll intervals plus transfer time; with the mirror, origin egress of one
artifact copy per site.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402
from edgectl_agent.pull_report import report_text  # noqa: E402
from edgectl_agent.pull_state import PullStatus  # noqa: E402
from tests.integration.test_metrics_fleet import Background  # noqa: E402
from tests.registry import Registry, _free_port  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO_NAME = "shops/models"
ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')
MIB = 2**20
PUBLISH_THREADS = 8


@dataclass
class Fleet:
    """What the simulated devices share: timings of their registry requests and when each reported the digest."""

    target_digest: str | None = None
    reported: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    errors: int = 0
    bytes_in: int = 0


async def timed(fleet: Fleet, client: httpx.AsyncClient, method: str, url: str, **kw) -> httpx.Response:
    t = time.perf_counter()
    try:
        r = await client.request(method, url, **kw)
    except httpx.HTTPError:
        fleet.errors += 1
        raise
    finally:
        fleet.requests += 1
    fleet.latencies.append(time.perf_counter() - t)
    fleet.bytes_in += len(r.content)
    return r


async def device(i: int, fleet: Fleet, client: httpx.AsyncClient, base: str, gateway: str, poll: float,
                 known: str, stop: asyncio.Event) -> None:
    """One pull device's loop (see the module docstring)."""
    rng = random.Random(i)
    await asyncio.sleep(rng.uniform(0, poll))  # devices start spread over one interval, as agents do
    accept = {"Accept": OCI_MANIFEST}
    applied_blob = None
    while not stop.is_set():
        try:
            head = await timed(fleet, client, "HEAD", f"{base}/manifests/state-d{i}", headers=accept)
            digest = head.headers.get("Docker-Content-Digest")
            if head.status_code == 200 and digest and digest != known:
                manifest = (await timed(fleet, client, "GET", f"{base}/manifests/{digest}", headers=accept)).json()
                state_blob = manifest["layers"][0]["digest"]
                state = json.loads((await timed(fleet, client, "GET", f"{base}/blobs/{state_blob}")).content)
                blob, size = state["digest"], state["size"]
                if blob != applied_blob:
                    await fetch(fleet, client, base, blob, size)
                    applied_blob = blob
                known = digest
            version = 2 if applied_blob is not None and applied_blob == fleet.target_digest else 1
            text = report_text(PullStatus(device=f"d{i}", outcome="applied", version=version,
                                          applied_version=version, poll_interval_s=int(poll)), [])
            r = await client.put(f"{gateway}/metrics/job/edgectl_pull/device/d{i}", content=text)
            r.raise_for_status()
            if fleet.target_digest is not None and applied_blob == fleet.target_digest and i not in fleet.reported:
                fleet.reported[i] = time.monotonic()
        except (httpx.HTTPError, KeyError, ValueError) as e:
            fleet.errors += 1
            if os.environ.get("PULL_SCALE_DEBUG"):
                print(f"d{i}: {type(e).__name__}: {e}", file=sys.stderr)
        try:
            await asyncio.wait_for(stop.wait(), timeout=poll * rng.uniform(0.8, 1.2))
        except asyncio.TimeoutError:
            pass


async def fetch(fleet: Fleet, client: httpx.AsyncClient, base: str, blob: str, size: int) -> None:
    """The blob in two ranged GETs (the second resumes where the first stopped); a 200 is the whole body."""
    half = size // 2
    r = await timed(fleet, client, "GET", f"{base}/blobs/{blob}", headers={"Range": f"bytes=0-{half - 1}"})
    data = r.content
    if r.status_code == 206:
        r = await timed(fleet, client, "GET", f"{base}/blobs/{blob}", headers={"Range": f"bytes={half}-"})
        data += r.content
    if "sha256:" + hashlib.sha256(data).hexdigest() != blob:
        raise ValueError(f"blob {blob} did not verify")


def publish_blob(client: httpx.Client, base: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if client.head(f"{base}/blobs/{digest}").status_code == 200:
        return digest
    start = client.post(f"{base}/blobs/uploads/")
    url = httpx.URL(base).join(start.headers["Location"]).copy_merge_params({"digest": digest})
    client.put(url, content=data, headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    return digest


def publish_states(client: httpx.Client, base: str, n: int, blob: str, size: int, version: int) -> dict[int, str]:
    """One state document per device, under ``state-d<i>``; returns each manifest digest."""
    empty = publish_blob(client, base, b"{}")

    def one(i: int) -> str:
        doc = json.dumps({"device": f"d{i}", "version": version, "digest": blob, "size": size}).encode()
        layer = publish_blob(client, base, doc)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "artifactType": "application/vnd.edgectl.state.v1+json",
                    "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
                    "layers": [{"mediaType": "application/vnd.edgectl.state.v1+json", "digest": layer,
                                "size": len(doc)}]}
        r = client.put(f"{base}/manifests/state-d{i}", content=json.dumps(manifest).encode(),
                       headers={"Content-Type": OCI_MANIFEST})
        r.raise_for_status()
        return r.headers["Docker-Content-Digest"]
    with ThreadPoolExecutor(max_workers=PUBLISH_THREADS) as pool:  # states of different devices are independent
        return dict(enumerate(pool.map(one, range(n))))


def origin_traffic(log: Path, offset: int) -> tuple[int, int, int]:
    """Requests, bytes sent and blob bytes sent by the origin since byte ``offset`` of its log."""
    requests = sent = blob_bytes = 0
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            m = ACCESS.search(line)
            if m:
                requests += 1
                sent += int(m.group(4))
                if "/blobs/sha256:" in m.group(2) and m.group(1) == "GET":
                    blob_bytes += int(m.group(4))
    return requests, sent, blob_bytes


def run(n: int, poll: float, blob_mib: float, timeout: float, mirror: bool, work: Path) -> dict:
    origin = Registry(work / "origin", {}).start()
    servers = [origin]
    gw_port = _free_port()
    gateway_proc = Background(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{gw_port}",
                               "--log.level=warn"], work / "pushgateway.log")
    gateway = f"http://127.0.0.1:{gw_port}"
    gateway_proc.wait_http(f"{gateway}/-/ready")
    try:
        front = origin
        if mirror:
            front = Registry(work / "mirror", {}, proxy_of=(f"http://{origin.address}", "", "")).start()
            servers.append(front)
        origin_base = f"http://{origin.address}/v2/{REPO_NAME}"
        device_base = f"http://{front.address}/v2/{REPO_NAME}"
        size = int(blob_mib * MIB)
        with httpx.Client(timeout=60) as c:
            old_blob = publish_blob(c, origin_base, os.urandom(size))
            known = publish_states(c, origin_base, n, old_blob, size, 1)
        return asyncio.run(_measure(n, poll, size, timeout, known, origin, origin_base, device_base, gateway))
    finally:
        gateway_proc.stop()
        for s in servers:
            s.stop()


async def _measure(n, poll, size, timeout, known, origin, origin_base, device_base, gateway) -> dict:
    fleet = Fleet()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        tasks = [asyncio.create_task(device(i, fleet, client, device_base, gateway, poll, known[i], stop))
                 for i in range(n)]
        await asyncio.sleep(poll * 1.5)  # every device polled at least once: the steady state before the change
        log_offset = origin.log.stat().st_size
        fleet.latencies.clear()
        fleet.requests = fleet.errors = 0
        started = time.monotonic()
        with httpx.Client(timeout=60) as c:  # publish from a thread: the event loop keeps serving the devices
            new_blob = await asyncio.to_thread(publish_blob, c, origin_base, os.urandom(size))
            fleet.target_digest = new_blob
            await asyncio.to_thread(publish_states, c, origin_base, n, new_blob, size, 2)
        published_s = time.monotonic() - started
        deadline = started + timeout
        need = -(-99 * n // 100)
        while len(fleet.reported) < need and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        t99 = (sorted(fleet.reported.values())[need - 1] - started) if len(fleet.reported) >= need else None
        elapsed = time.monotonic() - started
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(1)
    requests, sent, blob_bytes = origin_traffic(origin.log, log_offset)
    lat = sorted(fleet.latencies)
    return {"devices": n, "published_s": published_s, "t99_s": t99,
            "t99_after_publish_s": t99 - published_s if t99 is not None else None, "reported": len(fleet.reported),
            "elapsed_s": elapsed, "requests": fleet.requests, "rps": fleet.requests / elapsed,
            "p50_ms": 1000 * statistics.median(lat) if lat else None,
            "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None, "errors": fleet.errors,
            "origin_requests": requests, "origin_bytes": sent, "origin_blob_bytes": blob_bytes,
            "blob_bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000, help="simulated pull devices (default 1000)")
    ap.add_argument("--poll", type=float, default=10.0, help="their poll interval in seconds (default 10)")
    ap.add_argument("--blob-mib", type=float, default=1.0, help="size of the new artifact in MiB (default 1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up waiting for 99%% after this (s)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    rows, results = [], {}
    for mirror in (False, True):
        with tempfile.TemporaryDirectory(prefix="pull-scale-") as work:
            r = run(args.devices, args.poll, args.blob_mib, args.timeout, mirror, Path(work))
        results["mirror" if mirror else "origin"] = r
        print(json.dumps({"mirror": mirror, **r}), flush=True)
        target = 2 * args.poll + 5  # two poll intervals plus transfer (loopback: a few seconds)
        t99 = f"{r['t99_s']:.1f} s" if r["t99_s"] is not None else f"not reached ({r['reported']}/{r['devices']})"
        after = f"{r['t99_after_publish_s']:.1f} s" if r["t99_s"] is not None else "-"
        rows.append(["site mirror (proxy)" if mirror else "origin only", r["devices"], f"{r['published_s']:.1f} s",
                     t99, after, f"≤ {target:.0f} s", f"{r['rps']:.0f}", f"{r['p99_ms']:.0f} ms", r["errors"],
                     r["origin_requests"], f"{r['origin_blob_bytes'] / MIB:.1f} MiB",
                     f"{r['origin_blob_bytes'] / r['blob_bytes']:.1f}"])
    body = (f"{args.devices} simulated pull devices (asyncio pollers doing the agent's HTTP: manifest HEAD, manifest "
            f"and state GETs, the new {args.blob_mib:g} MiB artifact in two ranged GETs, a Pushgateway report "
            f"per poll), poll interval {args.poll:g} s ±20%, one Distribution origin, and the same with a second "
            "Distribution in proxy mode as the site mirror in front of it. Time to 99% counts from the start of "
            f"the publish ({args.devices} state documents + the artifact, {PUBLISH_THREADS} publishing threads). "
            "Origin figures come from the origin's access log; requests/s and p99 are what the devices saw from the "
            "registry they talk to.\n\n"
            + table(["path", "devices", "publish", "99% on new digest", "of which after the publish", "target",
                     "registry req/s", "p99", "errors", "origin requests", "origin blob bytes",
                     "artifact copies from origin"], rows))
    if not args.no_write:
        print(write_section("pull_scale", "Pull mode at fleet scale (issue 17)", body, dists=("httpx",)))
    else:
        print(body)


if __name__ == "__main__":
    main()
