"""Pull mode at fleet scale: N simulated pull devices against one real registry, with and without a site mirror.

    python bench/pull_scale.py [--devices 1000] [--poll 10] [--blob-mib 1] [--procs 4] [--timeout 180]
                               [--paths origin,mirror,mirror-split,mirror-cold] [--warm-sizes 1,16,128]
                               [--mirror shipped,distribution,nginx] [--no-write]

Real parts: Debian's docker-registry (CNCF Distribution) as the origin on 127.0.0.1 (anonymous: Distribution 2.8's
proxy mode logs in upstream only to a token-auth registry), the site mirror as deploy/site-mirror/ ships it (a
second Distribution in proxy mode whose upstream is an nginx cache of the origin; ``--mirror`` also runs a bare
Distribution proxy, or nginx alone, to compare), and
Prometheus's Pushgateway for the status reports. The devices are lightweight asyncio pollers spread over ``--procs``
processes (one httpx.AsyncClient each: a bounded connection pool; jitter as the agent: the first poll at a random
point of one interval, then every interval +-20%) doing the agent's real HTTP: per poll a manifest HEAD of
``state-<device>`` (OCI Accept header); on a new digest the manifest GET by digest, the state blob GET, the artifact
blob in two ranged GETs (a 200 is the whole body: taken as such), sha256 checked; then a status report PUT to the
Pushgateway (the agent's own report text). What they skip: signatures (no crypto in the loop), the store, model
loading. With the mirror, the publish does what ``edgectl apply`` does for a fleet with ``spec.pull.mirrors``:
artifact to the origin, the mirror warmed with it (edgectl.pull.mirrors.warm_mirror), then the states.

Measured per run: time from the end of the publish (N new state documents plus one new artifact; its own duration is
reported beside it) until 99% of the devices reported the new digest; the target is two poll intervals plus the
transfer time, computed from this run's own figures: N copies of the artifact over the throughput the device-facing
registry reached when it served the same blob to 32 concurrent clients just before (so a slow machine lengthens the
target by what it really costs to move the bytes, not by guesswork). Latency two ways: the registry's own (its
``http.response.duration`` log field: what the server took) and the devices' (from the request's start to its
answer, which on a loaded machine is mostly the pollers' own event-loop queueing). Origin egress from the origin's
access log; the status reports' latency (PUTs to the Pushgateway) apart. ``--warm-sizes`` first measures what warming
the mirror costs the origin per blob size.

Over 500 lines on purpose: one script run by path, whose parts (the pollers, the publisher, the log readers, the
report) serve this bench only and read best together.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402
from edgectl_agent.pull import HEARTBEAT_POLLS, JITTER  # noqa: E402
from edgectl_agent.pull_report import report_text  # noqa: E402
from edgectl_agent.pull_state import PullStatus  # noqa: E402
from tests.integration.test_metrics_fleet import Background, pushgateway_argv  # noqa: E402
from tests.registry import Registry, _free_port  # noqa: E402
from tests.site_mirror import OriginCache, site_mirror_registry  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REPO_NAME = "shops/models"
ACCESS = re.compile(r'"(GET|HEAD|PUT|POST|PATCH) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')
NGINX_TIME = re.compile(r'"(GET|HEAD) \S+ HTTP/[\d.]+" .* rt=([\d.]+)$')
DURATION = re.compile(r"([\d.]+)(ns|µs|us|ms|s|m|h)")
UNIT_S = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
MIB = 2**20
PUBLISH_THREADS = 8
CALIBRATION_CLIENTS = 32
# The Pushgateway checks the consistency of all its metrics on every push, one push at a time: at a 10 s poll that
# queues reports for tens of seconds (docs/pull.md, "Status back at scale"); large fleets run it without the check.
FAST_GATEWAY = ["--push.disable-consistency-check"]
POOL_PER_PROC = 128  # connections per poller process (the pool is the bound: requests beyond it wait their turn)


# -- the devices (run in the poller processes) -------------------------------------------------------------------
@dataclass
class Tally:
    """One poller process's figures: request latencies as the devices saw them, and when each reported."""

    latencies: list[float] = field(default_factory=list)
    report_latencies: list[float] = field(default_factory=list)  # the status report PUTs to the Pushgateway
    report_times: list[float] = field(default_factory=list)  # when each was sent (time.monotonic())
    reported: dict[int, float] = field(default_factory=dict)  # device -> time.monotonic() (system-wide on Linux)
    requests: int = 0
    errors: int = 0
    blob_bytes: int = 0


async def timed(t: Tally, client: httpx.AsyncClient, method: str, url: str, **kw) -> httpx.Response:
    start = time.perf_counter()
    t.requests += 1
    try:
        r = await client.request(method, url, **kw)
    except httpx.HTTPError:
        t.errors += 1
        raise
    t.latencies.append(time.perf_counter() - start)
    return r


async def device(i: int, t: Tally, client: httpx.AsyncClient, base: str, state_base: str, gateway: str, poll: float,
                 known: str, target: str, done, stop: asyncio.Event, report_every_poll: bool) -> None:
    rng = random.Random(i)
    await asyncio.sleep(rng.uniform(0, poll))  # the agent's first poll: a random point of one interval
    accept = {"Accept": OCI_MANIFEST}
    applied = None
    heartbeat = HEARTBEAT_POLLS * poll * (1 - JITTER)  # the agent's test (edgectl_agent.pull.Puller.report)
    reported_version, reported_at = 0, -heartbeat
    while not stop.is_set():
        try:
            head = await timed(t, client, "HEAD", f"{state_base}/manifests/state-d{i}", headers=accept)
            digest = head.headers.get("Docker-Content-Digest")
            if head.status_code == 200 and digest and digest != known:
                manifest = (await timed(t, client, "GET", f"{state_base}/manifests/{digest}", headers=accept)).json()
                state_blob = manifest["layers"][0]["digest"]
                state = json.loads((await timed(t, client, "GET", f"{state_base}/blobs/{state_blob}")).content)
                if state["digest"] != applied:
                    await fetch(t, client, base, state["digest"], state["size"])
                    applied = state["digest"]
                known = digest
            version = 2 if applied == target else 1
            # as the agent: a report when it says something new, else at least every heartbeat
            if report_every_poll or version != reported_version or time.monotonic() - reported_at >= heartbeat:
                text = report_text(PullStatus(device=f"d{i}", outcome="applied", version=version,
                                              applied_version=version, poll_interval_s=int(poll)), [],
                                   heartbeat_s=None if report_every_poll else heartbeat)
                sent = time.perf_counter()
                r = await client.put(f"{gateway}/metrics/job/edgectl_pull/device/d{i}", content=text)
                t.report_latencies.append(time.perf_counter() - sent)
                t.report_times.append(time.monotonic())
                r.raise_for_status()
                reported_version, reported_at = version, time.monotonic()
            if applied == target and i not in t.reported:
                t.reported[i] = time.monotonic()
                with done.get_lock():
                    done.value += 1
        except (httpx.HTTPError, KeyError, ValueError) as e:
            t.errors += 1
            if os.environ.get("PULL_SCALE_DEBUG"):
                print(f"d{i}: {type(e).__name__}: {e}", file=sys.stderr)
        try:
            await asyncio.wait_for(stop.wait(), timeout=poll * rng.uniform(0.8, 1.2))  # the agent's jitter
        except asyncio.TimeoutError:
            pass


async def fetch(t: Tally, client: httpx.AsyncClient, base: str, blob: str, size: int) -> None:
    """The blob in two ranged GETs (the second resumes where the first stopped); a 200 is the whole body."""
    half = size // 2
    r = await timed(t, client, "GET", f"{base}/blobs/{blob}", headers={"Range": f"bytes=0-{half - 1}"})
    data = r.content
    if r.status_code == 206:
        r = await timed(t, client, "GET", f"{base}/blobs/{blob}", headers={"Range": f"bytes={half}-"})
        data += r.content
    t.blob_bytes += len(data)
    if "sha256:" + hashlib.sha256(data).hexdigest() != blob:
        raise ValueError(f"blob {blob} did not verify")


def poller_process(devices: list[int], known: dict[int, str], base: str, state_base: str, gateway: str, poll: float,
                   target: str, done, stop_flag, out, report_every_poll: bool = False) -> None:
    """One poller process: its share of the devices until ``stop_flag`` is set; puts its Tally on ``out``."""
    async def main() -> Tally:
        t, stop = Tally(), asyncio.Event()
        limits = httpx.Limits(max_connections=POOL_PER_PROC, max_keepalive_connections=POOL_PER_PROC)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            tasks = [asyncio.create_task(device(i, t, client, base, state_base, gateway, poll, known[i], target, done,
                                                stop, report_every_poll))
                     for i in devices]
            while not stop_flag.is_set():
                await asyncio.sleep(0.2)
            stop.set()
            for task in tasks:  # a request still queued for a connection is not waited for
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return t
    out.put(asdict(asyncio.run(main())))


# -- the publisher and the registries (the main process) ---------------------------------------------------------
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


def start_registry(base: Path, proxy_of: str | None = None, registry: Registry | None = None) -> Registry:
    """A Distribution (``registry``, not started, or a new one) that logs every request's duration (JSON, info
    level) besides its access log."""
    r = registry or Registry(base, {}, proxy_of=(proxy_of, "", "") if proxy_of else None)
    config = r.config.read_text()
    r.config.write_text(config.replace("log: {level: warn}", "log: {level: info, formatter: json}")
                        .replace("log:\n  level: warn\n", "log:\n  level: info\n  formatter: json\n"))
    return r.start()


MIRRORS = {
    "shipped": "deploy/site-mirror: a Distribution in proxy mode whose upstream is an nginx cache of the origin",
    "distribution": "a Distribution in proxy mode of the origin itself (no cache between: before deploy/site-mirror)",
    "nginx": "nginx alone with deploy/site-mirror/nginx-origin-cache.conf (blobs cached, the rest passed through)",
}


def start_site_mirror(kind: str, work: Path, origin: Registry) -> tuple[Registry | OriginCache, list]:
    """The site mirror of ``kind`` (a key of MIRRORS) in front of ``origin``: (what devices talk to, every server
    started, to stop)."""
    if kind == "distribution":
        front = start_registry(work / "mirror", proxy_of=f"http://{origin.address}")
        return front, [front]
    cache = OriginCache(work / "origin-cache", f"http://{origin.address}").start()
    if kind == "nginx":
        return cache, [cache]
    mirror = start_registry(work / "mirror", registry=site_mirror_registry(work / "mirror", cache))
    return mirror, [cache, mirror]


def origin_traffic(log: Path, offset: int, artifact: str, end: int | None = None) -> tuple[int, int, int]:
    """Requests, bytes of blob ``artifact`` and bytes of all blobs (the states' too) the origin sent since byte
    ``offset`` of its log (up to byte ``end``)."""
    requests = artifact_bytes = blob_bytes = 0
    with open(log, "rb") as f:
        f.seek(offset)
        text = f.read() if end is None else f.read(end - offset)
        for line in text.decode("utf-8", "replace").splitlines():
            m = ACCESS.search(line)
            if m:
                requests += 1
                if "/blobs/sha256:" in m.group(2) and m.group(1) == "GET":
                    blob_bytes += int(m.group(4))
                    if m.group(2).endswith(f"/blobs/{artifact}"):
                        artifact_bytes += int(m.group(4))
    return requests, artifact_bytes, blob_bytes


def server_durations(log: Path, offset: int) -> list[float]:
    """What the registry itself took per request (its ``http.response.duration``), since byte ``offset``."""
    out = []
    with open(log, "rb") as f:
        f.seek(offset)
        for line in f.read().decode("utf-8", "replace").splitlines():
            nginx = NGINX_TIME.search(line)  # nginx's access log (tests/site_mirror.py's format)
            if nginx:
                out.append(float(nginx.group(2)))
                continue
            if '"http.response.duration"' not in line:
                continue
            try:
                entry = json.loads(line)
                value = entry["http.response.duration"]
            except (ValueError, KeyError):
                continue
            if entry.get("http.request.method") not in ("GET", "HEAD"):  # the publisher's uploads are not polls
                continue
            out.append(sum(float(n) * UNIT_S[u] for n, u in DURATION.findall(value)))
    return out


def calibrate(base: str, blob: str, size: int) -> float:
    """Bytes/s the registry at ``base`` serves ``blob`` at to CALIBRATION_CLIENTS concurrent clients (best of two:
    the first may fill a mirror)."""
    async def once() -> float:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CALIBRATION_CLIENTS)) as c:
            start = time.perf_counter()
            rs = await asyncio.gather(*(c.get(f"{base}/blobs/{blob}") for _ in range(CALIBRATION_CLIENTS)))
            assert all(len(r.content) == size for r in rs)
            return CALIBRATION_CLIENTS * size / (time.perf_counter() - start)
    return max(asyncio.run(once()), asyncio.run(once()))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    v = sorted(values)
    return 1000 * v[min(len(v) - 1, int(q * len(v)))] if v else None


def run(n: int, poll: float, blob_mib: float, procs: int, timeout: float, mirror: bool, work: Path,
        warm_mirror_first: bool = True, gateway_check: bool = False, states_at_origin: bool = False,
        report_every_poll: bool = False, mirror_kind: str = "shipped") -> dict:
    """One path. ``states_at_origin`` (with ``mirror``): the devices read their own state (tag HEAD, manifest, state
    blob: small, and each device's own, so a mirror has nothing to share) at the origin and fetch the artifact
    through the mirror, as an agent enrolled behind a mirror does (PullConfig.origin)."""
    from edgectl.apply.report import Events
    from edgectl.pull.oci import RegistryWriter

    origin = start_registry(work / "origin")
    servers = [origin]
    gw_port = _free_port()
    gateway_proc = Background(pushgateway_argv(gw_port, *([] if gateway_check else FAST_GATEWAY)),
                              work / "pushgateway.log")
    gateway = f"http://127.0.0.1:{gw_port}"
    ctx = mp.get_context("spawn")
    workers: list = []
    try:
        gateway_proc.wait_http(f"{gateway}/-/ready")
        front = origin
        if mirror:
            front, started_servers = start_site_mirror(mirror_kind, work, origin)
            servers += started_servers
        origin_base = f"http://{origin.address}/v2/{REPO_NAME}"
        device_base = f"http://{front.address}/v2/{REPO_NAME}"
        size = int(blob_mib * MIB)
        new_data = os.urandom(size)
        target = "sha256:" + hashlib.sha256(new_data).hexdigest()
        with httpx.Client(timeout=60) as c:
            old_blob = publish_blob(c, origin_base, os.urandom(size))
            known = publish_states(c, origin_base, n, old_blob, size, 1)
        say(f"{n} devices' first states published; calibrating")
        throughput = calibrate(device_base, old_blob, size)
        say(f"the {'mirror' if mirror else 'origin'} serves {throughput / MIB:.0f} MiB/s; starting {procs} poller "
            "processes")

        done, stop_flag, out = ctx.Value("i", 0), ctx.Event(), ctx.Queue()
        shards = [list(range(k, n, procs)) for k in range(procs)]
        state_base = origin_base if mirror and states_at_origin else device_base
        for shard in shards:
            p = ctx.Process(target=poller_process, args=(shard, {i: known[i] for i in shard}, device_base, state_base,
                                                         gateway, poll, target, done, stop_flag, out,
                                                         report_every_poll))
            p.start()
            workers.append(p)
        time.sleep(poll + 2)  # every device polled once: from here on the steady state before the change
        steady_offset, steady_start = origin.log.stat().st_size, time.monotonic()
        time.sleep(poll / 2)
        origin_offset, front_offset = origin.log.stat().st_size, front.log.stat().st_size
        steady_rps = origin_traffic(origin.log, steady_offset, "-", end=origin_offset)[0] / (time.monotonic()
                                                                                                - steady_start)
        started = time.monotonic()
        warm = None
        with httpx.Client(timeout=60) as c:
            publish_blob(c, origin_base, new_data)
            if mirror and warm_mirror_first:  # as `edgectl apply` does for spec.pull.mirrors
                w = RegistryWriter(front.address, REPO_NAME, plain_http=True)
                try:
                    from edgectl.pull.mirrors import warm_mirror
                    t = time.monotonic()
                    result = warm_mirror(w, [target], Events())
                    warm = time.monotonic() - t
                    if result.error:
                        raise SystemExit(f"warming the mirror failed: {result.error}")
                finally:
                    w.close()
            publish_states(c, origin_base, n, target, size, 2)
        published_s = time.monotonic() - started
        say(f"new artifact and {n} states published in {published_s:.1f} s")
        need = -(-99 * n // 100)
        shown = time.monotonic()
        while done.value < need and time.monotonic() < started + timeout:
            time.sleep(0.2)
            if time.monotonic() - shown > 10:
                say(f"{done.value}/{n} devices report the new digest")
                shown = time.monotonic()
        elapsed = time.monotonic() - started
        stop_flag.set()
        tallies = [Tally(**out.get(timeout=300)) for _ in workers]
    finally:
        for p in workers:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        gateway_proc.stop()
        for s in reversed(servers):
            s.stop()
    reported = sorted(v for t in tallies for v in t.reported.values())
    # counted from the end of the publish, when every new state is there to be seen (the publish itself, N state
    # documents from one controller, is reported beside it)
    t99 = reported[need - 1] - started - published_s if len(reported) >= need else None
    client = [x for t in tallies for x in t.latencies]
    reports = [x for t in tallies for x in t.report_latencies]
    server = server_durations(front.log, front_offset)
    if mirror and states_at_origin:  # the devices' state reads went to the origin
        server += server_durations(origin.log, origin_offset)
    requests, artifact_bytes, blob_bytes = origin_traffic(origin.log, origin_offset, target)
    transfer_s = n * size / throughput
    return {"mirror": mirror, "mirror_kind": mirror_kind if mirror else None, "warmed": mirror and warm_mirror_first, "gateway_check": gateway_check,
            "states_at_origin": mirror and states_at_origin, "origin_steady_rps": steady_rps,
            "devices": n, "procs": procs, "published_s": published_s, "warm_s": warm,
            "t99_s": t99, "reported": len(reported), "elapsed_s": elapsed,
            "throughput_mib_s": throughput / MIB, "transfer_s": transfer_s, "target_s": 2 * poll + transfer_s,
            "requests": sum(t.requests for t in tallies), "rps": sum(t.requests for t in tallies) / elapsed,
            "errors": sum(t.errors for t in tallies),
            "server_p50_ms": pct(server, 0.5), "server_p99_ms": pct(server, 0.99), "server_requests": len(server),
            "client_p50_ms": pct(client, 0.5), "client_p99_ms": pct(client, 0.99),
            "report_p50_ms": pct(reports, 0.5), "report_p99_ms": pct(reports, 0.99),
            "reports_per_s": sum(started <= x <= started + elapsed for t in tallies for x in t.report_times) / elapsed,
            "steady_reports_per_s": sum(steady_start <= x < started for t in tallies for x in t.report_times)
            / (started - steady_start),
            "report_every_poll": report_every_poll,
            "origin_requests": requests, "origin_blob_bytes": blob_bytes, "origin_artifact_bytes": artifact_bytes,
            "blob_bytes": size, "copies": artifact_bytes / size}


def ms(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def verdicts(r: dict, poll: float) -> list[str]:
    where = ("origin only" if not r["mirror"] else "through the site mirror, not warmed" if not r["warmed"]
             else "warmed site mirror, states read at the origin" if r["states_at_origin"]
             else "through the warmed site mirror")
    if r["mirror"]:
        where += f" ({r['mirror_kind']})"
    got = f"{r['t99_s']:.1f} s" if r["t99_s"] is not None else f"not reached in {r['elapsed_s']:.0f} s"
    ok = r["t99_s"] is not None and r["t99_s"] <= r["target_s"]
    if r["t99_s"] is not None:
        got += f" after the publish ended ({r['t99_s'] + r['published_s']:.1f} s from its start)"
    lines = [f"{where}: 99% on the new digest {got} vs target {r['target_s']:.1f} s (2 x {poll:g} s poll + "
             f"{r['transfer_s']:.1f} s transfer of {r['devices']} x {r['blob_bytes'] / MIB:g} MiB at "
             f"{r['throughput_mib_s']:.0f} MiB/s measured): {'MET' if ok else 'MISSED'}; registry p99 "
             f"{ms(r['server_p99_ms'], 1)} ms (server) vs {ms(r['client_p99_ms'])} ms (devices, with their own "
             f"queueing); status report p99 {ms(r['report_p99_ms'])} ms (Pushgateway"
             f"{' with' if r['gateway_check'] else ' without'} its consistency check, "
             f"{r['steady_reports_per_s']:.1f} reports/s before the publish, {r['reports_per_s']:.0f} after it: "
             f"{'after every poll' if r['report_every_poll'] else 'on change and every heartbeat'}); the origin "
             f"answered {r['origin_steady_rps']:.0f} requests/s while {r['devices']} devices polled unchanged states"]
    if r["mirror"]:
        lines.append(f"{where}: origin egress {r['copies']:.2f} artifact copies for {r['devices']} devices at one "
                     f"site vs target 1: {'MET' if r['copies'] <= 1.05 else 'MISSED'}"
                     + ("" if r["copies"] <= 1.05 else
                        " (Distribution 2.8's proxy fetches a missed blob twice: once to answer, once to store; the "
                        "warm closes the first after its headers, which saves the blob only when it is larger than "
                        "what the sockets between origin and mirror buffer: see --warm-sizes"
                        + ("" if r["warmed"] else "; and once more per request that misses while a fetch runs")
                        + ")" if r["mirror_kind"] == "distribution" else ""))
    return lines


WARM_DEVICES = 8  # devices that fetch each warmed blob through the mirror (the fleet run has the many)


def warm_copies(sizes_mib: list[float], work: Path, clients: int = WARM_DEVICES,
                mirror_kind: str = "shipped") -> list[dict]:
    """Per blob size: what warming the site mirror of ``mirror_kind`` (edgectl.pull.mirrors.warm_mirror) costs the
    origin, and what ``clients`` devices fetching the blob through the mirror right after cost it (nothing, when the
    warm worked). One origin and one mirror for all sizes; copies from the origin's access log."""
    from edgectl.apply.report import Events
    from edgectl.pull.mirrors import warm_mirror
    from edgectl.pull.oci import RegistryWriter

    origin = start_registry(work / "origin")
    mirror, servers = start_site_mirror(mirror_kind, work, origin)
    out = []
    try:
        origin_base, mirror_base = f"http://{origin.address}/v2/{REPO_NAME}", f"http://{mirror.address}/v2/{REPO_NAME}"
        for mib in sizes_mib:
            size = int(mib * MIB)
            with httpx.Client(timeout=120) as c:
                blob = publish_blob(c, origin_base, os.urandom(size))
            offset = origin.log.stat().st_size
            w = RegistryWriter(mirror.address, REPO_NAME, plain_http=True)
            try:
                started = time.monotonic()
                result = warm_mirror(w, [blob], Events())
                warm_s = time.monotonic() - started
            finally:
                w.close()
            if result.error:
                raise SystemExit(f"warming the mirror failed: {result.error}")
            time.sleep(1)  # let the origin log the aborted stream
            warm_bytes = origin_traffic(origin.log, offset, blob)[1]

            async def device(c: httpx.AsyncClient) -> int:  # streamed and hashed: blobs can be large
                hasher, got = hashlib.sha256(), 0
                async with c.stream("GET", f"{mirror_base}/blobs/{blob}") as r:
                    async for chunk in r.aiter_bytes(MIB):
                        hasher.update(chunk)
                        got += len(chunk)
                assert "sha256:" + hasher.hexdigest() == blob and got == size
                return got

            async def devices() -> None:
                async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=clients)) as c:
                    await asyncio.gather(*(device(c) for _ in range(clients)))
            asyncio.run(devices())
            time.sleep(1)
            total = origin_traffic(origin.log, offset, blob)[1]
            out.append({"mirror_kind": mirror_kind, "blob_mib": mib, "warm_s": warm_s, "warm_copies": warm_bytes / size,
                        "copies_after_devices": total / size, "devices": clients})
            say(f"{mib:g} MiB: warm {warm_s:.1f} s, {warm_bytes / size:.3f} copies; {total / size:.3f} after "
                f"{clients} devices fetched it through the mirror")
    finally:
        for server in reversed([origin, *servers]):
            server.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000, help="simulated pull devices (default 1000)")
    ap.add_argument("--poll", type=float, default=10.0, help="their poll interval in seconds (default 10)")
    ap.add_argument("--blob-mib", type=float, default=1.0, help="size of the new artifact in MiB (default 1)")
    ap.add_argument("--procs", type=int, default=min(4, os.cpu_count() or 1),
                    help="poller processes the devices are spread over (default: min(4, CPUs))")
    ap.add_argument("--timeout", type=float, default=180.0, help="give up waiting for 99%% after this (s)")
    ap.add_argument("--paths", default="origin,mirror",
                    help="comma-separated: origin, mirror (warmed as apply does), mirror-cold (not warmed: the "
                         "devices' concurrent misses fill it); default origin,mirror")
    ap.add_argument("--mirror", default="shipped",
                    help="comma-separated site mirror shapes the mirror paths and --warm-sizes run with: "
                         + "; ".join(f"{k}: {v}" for k, v in MIRRORS.items()) + " (default shipped)")
    ap.add_argument("--gateway-check", action="store_true",
                    help="run the Pushgateway with its per-push consistency check (its default; off by default "
                         "here, as docs/pull.md advises for large fleets)")
    ap.add_argument("--warm-sizes", default="",
                    help="comma-separated blob sizes in MiB: first measure the origin copies a mirror warm costs "
                         "per size (e.g. 1,16,128,512), then run --paths")
    ap.add_argument("--report-every-poll", action="store_true",
                    help="devices report after every poll (agents before this change) instead of on change plus a "
                         "heartbeat every %d polls" % HEARTBEAT_POLLS)
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = ap.parse_args()
    kinds = [k for k in args.mirror.split(",") if k]
    for kind in kinds:
        if kind not in MIRRORS:
            ap.error(f"unknown --mirror {kind!r}: use {', '.join(MIRRORS)}")
    rows, lines, warm_rows = [], [], []
    for kind in kinds if args.warm_sizes else []:
        with tempfile.TemporaryDirectory(prefix="pull-warm-") as work:
            for w in warm_copies([float(x) for x in args.warm_sizes.split(",")], Path(work), mirror_kind=kind):
                print(json.dumps(w), flush=True)
                ok = w["copies_after_devices"] <= 1.05
                lines.append(f"warm of a {w['blob_mib']:g} MiB blob ({kind}): {w['copies_after_devices']:.3f} origin "
                             f"copies after the warm and {w['devices']} devices' GETs through the mirror vs target 1: "
                             f"{'MET' if ok else 'MISSED'}" + ("" if ok or kind != "distribution" else
                                                                " (a blob this small fits in the sockets' buffers: "
                                                                "the aborted first answer is sent whole)"))
                warm_rows.append([kind, f"{w['blob_mib']:g} MiB", f"{w['warm_s']:.1f} s", f"{w['warm_copies']:.3f}",
                                  w["devices"], f"{w['copies_after_devices']:.3f}"])
    paths = [p for p in args.paths.split(",") if p]
    for path, kind in [(p, k) for p in paths for k in (kinds if p != "origin" else ["-"])]:
        if path not in ("origin", "mirror", "mirror-split", "mirror-cold"):
            ap.error(f"unknown path {path!r}: use origin, mirror, mirror-split or mirror-cold")
        mirror = path != "origin"
        with tempfile.TemporaryDirectory(prefix="pull-scale-") as work:
            r = run(args.devices, args.poll, args.blob_mib, args.procs, args.timeout, mirror, Path(work),
                    warm_mirror_first=path != "mirror-cold", gateway_check=args.gateway_check,
                    states_at_origin=path == "mirror-split", report_every_poll=args.report_every_poll,
                    mirror_kind=kind)
        print(json.dumps(r), flush=True)
        lines += verdicts(r, args.poll)
        t99 = (f"{r['t99_s']:.1f} s" if r["t99_s"] is not None
               else f"not reached ({r['reported']}/{r['devices']} in {r['elapsed_s']:.0f} s)")
        rows.append([{"origin": "origin only", "mirror": "site mirror (warmed)",
                      "mirror-split": "site mirror (warmed), states read at the origin",
                      "mirror-cold": "site mirror (not warmed)"}[path] + ("" if path == "origin" else f": {kind}"),
                     r["devices"], r["procs"],
                     f"{r['published_s']:.1f} s" + (f" (warm {r['warm_s']:.1f} s)" if r["warm_s"] else ""), t99,
                     f"≤ {r['target_s']:.1f} s", f"{r['throughput_mib_s']:.0f} MiB/s", f"{r['rps']:.0f}",
                     f"{ms(r['server_p50_ms'], 1)} / {ms(r['server_p99_ms'], 1)} ms",
                     f"{ms(r['client_p50_ms'])} / {ms(r['client_p99_ms'])} ms",
                     f"{ms(r['report_p50_ms'])} / {ms(r['report_p99_ms'])} ms", r["errors"],
                     f"{r['origin_steady_rps']:.0f}", r["origin_requests"],
                     f"{r['origin_blob_bytes'] / MIB:.1f} MiB", f"{r['copies']:.2f}"])
    for line in lines:
        print("VERDICT " + line)
    body = (f"{args.devices} simulated pull devices (asyncio pollers in {args.procs} processes doing the agent's "
            f"HTTP: manifest HEAD, manifest and state GETs, the new {args.blob_mib:g} MiB artifact in two ranged "
            f"GETs, a Pushgateway report per poll; first poll at a random point of one interval, then every "
            f"{args.poll:g} s ±20%), one Distribution origin, and the same with a site mirror in front of it ("
            + "; ".join(f"{k}: {MIRRORS[k]}" for k in kinds) + "), warmed by the publish as `edgectl apply` does "
            "for `spec.pull.mirrors`. Time to 99% counts from the end of the publish (N state documents and the "
            "artifact, from one controller: its duration is the publish column). Target: two poll intervals "
            "plus the transfer time of N copies at the throughput the device-facing registry reached in this run "
            f"({CALIBRATION_CLIENTS} concurrent GETs of the same size). Latency: the registry's own "
            "(`http.response.duration` in its log) and the devices' (including their own queueing); status "
            "reports are PUTs to a Pushgateway run "
            + ("with its default per-push consistency check" if args.gateway_check
               else "with `--push.disable-consistency-check`") + ". Origin figures from the origin's access log.\n\n"
            + table(["path", "devices", "poller processes", "publish", "99% on new digest after the publish",
                     "target", "registry throughput",
                     "requests/s", "registry p50 / p99", "devices' p50 / p99", "status report p50 / p99", "errors",
                     "origin requests/s (steady polling)", "origin requests after the publish",
                     "origin blob bytes (all)", "artifact copies from origin"], rows)
            + ("\n\nWarming the site mirror per blob size (`--warm-sizes`): the warm closes the mirror's first "
               "answer after its headers (with a bare Distribution proxy only the copy it stores then goes through, "
               "for a blob larger than the sockets buffer; with the shipped nginx cache both of its fetches are "
               f"one origin fetch); then {WARM_DEVICES} devices fetch the blob through the mirror at once.\n\n"
               + table(["site mirror", "blob", "warm", "origin copies after the warm", "devices",
                        "origin copies after the devices"], warm_rows) if warm_rows else "")
            + "\n\n" + "\n".join(f"- {line}" for line in lines))
    if not args.no_write:
        print(write_section("pull_scale", "Pull mode at fleet scale (issue 17)", body, dists=("httpx",)))
    else:
        print(body)


if __name__ == "__main__":
    main()
