"""The fleet collector: one Prometheus endpoint that gathers every agent's /metrics through its transport.

Agents bind loopback and sit behind NAT, so Prometheus cannot reach them; edgectl can, through each device's
transport (local HTTP, an SSH direct-tcpip channel, docker exec or a loopback-published port). A ``MetricsScraper`` turns a device into its agent's exposition text; the collector runs one per
device concurrently under one deadline, adds fleet labels (device, profile, and per deployment the model, format
and quant it serves) and a reachability gauge per device. A device that does not answer costs at most the timeout:
its thread is left to finish on its own and the device reads ``edgectl_device_up 0`` with its last error.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from edgectl.errors import AgentError, EdgectlError, TransportError
from edgectl.spec import Device

DEFAULT_TIMEOUT_S = 5.0
ARTIFACT_INFO = "edgectl_agent_active_artifact_info"
ARTIFACT_LABELS = ("model", "format", "quant")  # joined onto every series that has a `deployment` label
ERROR_TEXT_MAX = 200  # the error label stays short: one series per device, and readable in a table
# Why a scrape failed, as a bounded label value (the message itself goes in `error`).
REASONS = ("timeout", "unreachable", "not_running", "unauthorized", "http_error", "bad_exposition", "transport",
           "still_running")


class MetricsScraper(Protocol):
    """Reads one device's agent /metrics text (``TransportScraper``: through the device's own transport)."""

    def scrape(self, device: Device, timeout: float) -> str:
        """The exposition text; raises EdgectlError (with a hint) when the agent cannot be read."""


class TransportScraper:
    """Through the device's transport: its agent client (``agent(start=False)``, never starting anything). The
    transport and client are kept between scrapes (an SSH connection is not set up anew every few seconds) and
    dropped after a failure, so the next scrape reconnects."""

    def __init__(self) -> None:
        self._open: dict[str, tuple] = {}  # device name -> (transport, client)
        self._lock = threading.Lock()

    def scrape(self, device: Device, timeout: float) -> str:
        from edgectl.agents import connect

        with self._lock:
            held = self._open.pop(device.name, None)
        try:
            if held is None:
                transport = connect(device)
                client = transport.agent(start=False)
                if client is None:
                    transport.close()
                    raise TransportError(f"device '{device.name}': no agent answers",
                                         hint="start it with `edgectl apply` (or the edgectl-agent systemd unit)")
                held = (transport, client)
            text = held[1].metrics(timeout=timeout)
        except BaseException:
            if held is not None:
                _close(*held)
            raise
        with self._lock:
            self._open[device.name] = held
        return text

    def close(self) -> None:
        with self._lock:
            held, self._open = list(self._open.values()), {}
        for transport, client in held:
            _close(transport, client)


def _close(transport, client) -> None:
    for thing in (client, transport):
        try:
            thing.close()
        except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is being dropped anyway
            pass


@dataclass
class DeviceScrape:
    """The last scrape of one device."""

    device: str
    profile: str
    up: bool
    text: str = ""
    error: str | None = None
    reason: str | None = None
    duration_s: float = 0.0
    last_success: float | None = None  # Unix time

    def to_dict(self) -> dict:
        return {"device": self.device, "profile": self.profile, "up": self.up, "error": self.error,
                "reason": self.reason, "duration_s": round(self.duration_s, 4), "last_success": self.last_success}


def failure_reason(e: BaseException) -> str:
    """A bounded label value saying why a scrape failed."""
    cause = e.__cause__
    if isinstance(e, TimeoutError) or isinstance(cause, httpx.TimeoutException):
        return "timeout"
    if isinstance(e, AgentError):
        return "unauthorized" if e.status == 401 else "http_error"
    if isinstance(cause, httpx.HTTPError):
        return "unreachable"
    if isinstance(e, TransportError) and "no agent answers" in e.message:
        return "not_running"
    if isinstance(e, ValueError):
        return "bad_exposition"
    return "transport"


def short_error(e: BaseException) -> str:
    text = (e.message if isinstance(e, EdgectlError) else str(e)) or type(e).__name__
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 3] + "..."


class FleetCollector:
    """Scrapes every device concurrently, each call bounded by ``timeout`` seconds in all."""

    def __init__(self, devices: Iterable[Device], scraper: MetricsScraper | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, max_workers: int = 32) -> None:
        self.devices = list(devices)
        self.scraper = scraper or TransportScraper()
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(self.devices) or 1)),
                                        thread_name_prefix="edgectl-scrape")
        self._inflight: dict[str, tuple[Future, float]] = {}  # device -> (its scrape, that round's deadline)
        self._last: dict[str, DeviceScrape] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self.scraper, "close", None)
        if close is not None:
            close()

    def scrape_all(self) -> list[DeviceScrape]:
        """One concurrent round. Returns within ``timeout`` (plus bookkeeping) whatever the devices do. Rounds that
        overlap (two Prometheus servers, or /devices beside /metrics) share the scrapes already running."""
        now = time.monotonic()
        deadline = now + self.timeout
        started: dict[str, Future] = {}
        results: dict[str, DeviceScrape] = {}
        with self._lock:
            for d in self.devices:
                pending = self._inflight.get(d.name)
                if pending is not None and not pending[0].done():
                    if pending[1] > now:  # a round still within its deadline: wait for the same scrape
                        started[d.name] = pending[0]
                        continue
                    # A scrape from an earlier round is stuck: do not pile another thread onto it.
                    results[d.name] = self._failed(d, "still_running", "the previous scrape has not returned yet "
                                                   f"(over {self.timeout:g} s)", 0.0)
                    continue
                started[d.name] = self._pool.submit(self._scrape_one, d, deadline)
                self._inflight[d.name] = (started[d.name], deadline)
        wait_futures(list(started.values()), timeout=max(0.0, deadline - time.monotonic()))
        by_name = {d.name: d for d in self.devices}
        for name, fut in started.items():
            if fut.done():
                results[name] = fut.result()
            else:
                results[name] = self._failed(by_name[name], "timeout",
                                             f"no answer within {self.timeout:g} s", self.timeout)
        with self._lock:
            for name, r in results.items():
                if r.up:
                    self._last[name] = r
                else:
                    r.last_success = (self._last.get(name) or r).last_success
        return [results[d.name] for d in self.devices]

    def _scrape_one(self, device: Device, deadline: float) -> DeviceScrape:
        begin = time.monotonic()
        try:
            text = self.scraper.scrape(device, max(0.05, deadline - begin))
            parse_exposition(text)  # a device that answers garbage is not "up"
        except Exception as e:  # noqa: BLE001 - every failure becomes up=0 and a reason; nothing escapes
            return self._failed(device, failure_reason(e), short_error(e), time.monotonic() - begin)
        return DeviceScrape(device.name, device.profile, up=True, text=text, duration_s=time.monotonic() - begin,
                            last_success=time.time())

    @staticmethod
    def _failed(device: Device, reason: str, error: str, duration: float) -> DeviceScrape:
        return DeviceScrape(device.name, device.profile, up=False, error=error, reason=reason, duration_s=duration)

    def exposition(self) -> bytes:
        scrapes = self.scrape_all()
        return generate_latest(_Families(fleet_families(scrapes)))


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def parse_exposition(text: str) -> list[Metric]:
    """Parse the text format (ValueError on garbage)."""
    return list(text_string_to_metric_families(text))


def artifact_labels(families: Iterable[Metric]) -> dict[str, dict[str, str]]:
    """deployment -> {model, format, quant} from the agent's active-artifact info metric."""
    out: dict[str, dict[str, str]] = {}
    for f in families:
        if f.name != ARTIFACT_INFO:
            continue
        for s in f.samples:
            dep = s.labels.get("deployment")
            if dep is not None:
                out[dep] = {k: s.labels.get(k, "") for k in ARTIFACT_LABELS}
    return out


def relabel(families: Iterable[Metric], fleet_labels: dict[str, str]) -> list[Metric]:
    """Every sample gets ``fleet_labels`` (device, profile); samples with a ``deployment`` get that deployment's
    model/format/quant. An agent label of the same name is kept as ``exported_<name>``, as Prometheus does."""
    families = list(families)
    artifacts = artifact_labels(families)
    out = []
    for f in families:
        g = Metric(f.name, f.documentation, f.type, f.unit)
        for s in f.samples:
            labels = dict(s.labels)
            extra = dict(fleet_labels)
            dep = labels.get("deployment")
            if dep is not None and f.name != ARTIFACT_INFO:
                extra.update(artifacts.get(dep, {}))
            for k, v in extra.items():
                if k in labels and labels[k] != v:
                    labels[f"exported_{k}"] = labels[k]
                labels[k] = v
            g.samples.append(Sample(s.name, labels, s.value, s.timestamp, s.exemplar))
        out.append(g)
    return out


def merge(families_per_device: Iterable[list[Metric]]) -> list[Metric]:
    """One family per metric name (the text format requires a family's samples together)."""
    merged: dict[str, Metric] = {}
    for families in families_per_device:
        for f in families:
            into = merged.get(f.name)
            if into is None:
                merged[f.name] = into = Metric(f.name, f.documentation, f.type, f.unit)
            if into.type == f.type:  # agents of different versions could disagree: keep the first type
                into.samples.extend(f.samples)
    return list(merged.values())


def fleet_families(scrapes: list[DeviceScrape]) -> list[Metric]:
    """The collector's whole exposition: relabeled agent metrics plus reachability per device."""
    per_device = []
    for s in scrapes:
        if s.up:
            per_device.append(relabel(parse_exposition(s.text), {"device": s.device, "profile": s.profile}))
    out = merge(per_device)
    up = GaugeMetricFamily("edgectl_device_up", "1 when the collector read the device's agent metrics in the last "
                           "scrape, else 0.", labels=["device", "profile"])
    duration = GaugeMetricFamily("edgectl_device_scrape_duration_seconds", "Seconds the last scrape of the device "
                                 "took (the timeout when it did not answer).", labels=["device", "profile"])
    success = GaugeMetricFamily("edgectl_device_last_success_timestamp_seconds", "Unix time of the last successful "
                                "scrape of the device (absent until one succeeded).", labels=["device", "profile"])
    error = GaugeMetricFamily("edgectl_device_scrape_error_info", "Why the device could not be scraped (present "
                              "while it is down): reason is one of a fixed set, error the message.",
                              labels=["device", "profile", "reason", "error"])
    for s in scrapes:
        up.add_metric([s.device, s.profile], 1 if s.up else 0)
        duration.add_metric([s.device, s.profile], s.duration_s)
        if s.last_success is not None:
            success.add_metric([s.device, s.profile], s.last_success)
        if not s.up:
            error.add_metric([s.device, s.profile, s.reason or "transport", s.error or ""], 1)
    return out + [up, duration, success, error]


# -- file_sd targets ------------------------------------------------------------------------------------------


def file_sd_targets(devices: Iterable[Device]) -> list[dict]:
    """Prometheus file_sd entries for scraping agents directly (agents listening beyond loopback)."""
    out = []
    for d in devices:
        host = "127.0.0.1" if d.transport.type == "local" else getattr(d.transport, "host", None)
        if host is None:
            continue
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        out.append({"targets": [f"{host}:{d.agent.port}"],
                    "labels": {"device": d.name, "profile": d.profile, "transport": d.transport.type}})
    return out


def targets_json(devices: Iterable[Device]) -> str:
    return json.dumps(file_sd_targets(devices), indent=2) + "\n"


# -- HTTP endpoint ----------------------------------------------------------------------------------------------


def make_server(collector: FleetCollector, host: str, port: int) -> ThreadingHTTPServer:
    """``/metrics`` (the fleet), ``/devices`` (last scrape per device, JSON), ``/healthz``. Bound to loopback, it
    answers only requests addressed to a loopback name, as the agent does."""
    from edgectl_agent.hosts import is_loopback_host
    from edgectl_agent.settings import is_loopback

    guard_host = is_loopback(host)

    class Handler(BaseHTTPRequestHandler):
        server_version = "edgectl-collector"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if guard_host and not is_loopback_host(self.headers.get("Host") or ""):
                # DNS rebinding: a page whose name resolves to 127.0.0.1 must not read the fleet's metrics
                self._send(421, f"refused: Host {self.headers.get('Host')!r} is not a loopback name; this endpoint "
                                f"listens on {host} - address it as http://127.0.0.1:{self.server.server_port}\n"
                                .encode(), "text/plain")
            elif path == "/metrics":
                self._send(200, collector.exposition(), CONTENT_TYPE_LATEST)
            elif path == "/devices":
                body = json.dumps([s.to_dict() for s in collector.scrape_all()], indent=2).encode()
                self._send(200, body, "application/json")
            elif path == "/healthz":
                self._send(200, b'{"status": "ok"}', "application/json")
            else:
                self._send(404, b"not found: try /metrics, /devices or /healthz\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: Prometheus scrapes every few s
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        raise TransportError(f"cannot listen on {host}:{port} for the metrics endpoint: {e.strerror}",
                             hint="pick a free port with --port, or stop what listens there") from e
    server.daemon_threads = True
    return server

