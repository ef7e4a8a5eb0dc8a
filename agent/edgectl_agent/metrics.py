"""Prometheus metrics, in a registry per app (no process globals), and the ``/metrics`` router.

Labels are bounded: endpoint = the route template (or "unmatched"), status = HTTP code, deployment = a name the
control plane created, state = one of four phases, runtime = a runtime name. Nothing taken from a request body or
URL ever becomes a label value. Latency histograms are kept for the serving endpoints (/v1, /v2) only, so one
device stays well under 500 series.

Values that describe the present (backend up, disk free, process RSS/CPU) are read when /metrics is scraped, so
they are never stale; none of them waits for a model: /metrics answers while one generates.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgectl_agent import __version__
from edgectl_agent.admission import RequestQueue
from edgectl_agent.api import ArtifactRef, DeploymentPhase

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
# Time per output token: 1 ms (a tiny model) to 2.5 s (a big one on a small CPU); 10-100 ms is the usual range.
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PHASES: tuple[DeploymentPhase, ...] = ("loading", "serving", "failed")  # "removed" deployments are forgotten
TIMED_PREFIXES = ("/v1/", "/v2/")  # endpoints whose latency is a histogram (serving traffic)


class AgentMetrics:
    """Every metric one agent exports. ``store_root``: the filesystem whose free space is reported."""

    def __init__(self, store_root: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgectl_agent_requests", "HTTP requests answered, by route template and status.",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("edgectl_agent_request_duration_seconds",
                                 "Time from request to the end of the response body (serving endpoints /v1, /v2).",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edgectl_agent_time_to_first_token_seconds",
                              "Time from request to the first generated token (streaming).", ["deployment"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.time_per_output_token = Histogram(
            "edgectl_agent_time_per_output_token_seconds",
            "Per streamed request: seconds from its first token to its last over the tokens after the first "
            "(OpenTelemetry gen_ai.server.time_per_output_token).", ["deployment"], buckets=TPOT_BUCKETS, registry=r)
        self.queue_wait = Histogram("edgectl_agent_queue_wait_seconds",
                                    "Time a generation request waited in its deployment's queue before the model "
                                    "started on it (edgectl_agent.admission).", ["deployment"],
                                    buckets=QUEUE_BUCKETS, registry=r)
        self.generation_duration = Histogram(
            "edgectl_agent_generation_duration_seconds",
            "Time from a generation (or embedding) request's arrival to its end, queue wait included, per "
            "deployment (OpenTelemetry gen_ai.server.request.duration).", ["deployment"], buckets=LATENCY_BUCKETS,
            registry=r)
        self.prompt_tokens = Counter("edgectl_agent_prompt_tokens", "Prompt tokens processed (requests that report "
                                     "usage: non-streaming ones).", ["deployment"], registry=r)
        self.completion_tokens = Counter("edgectl_agent_completion_tokens", "Tokens generated.", ["deployment"],
                                         registry=r)
        self.decode_seconds = Counter("edgectl_agent_decode_seconds",
                                      "Seconds spent generating: streaming from the first token to the last, "
                                      "non-streaming the whole call. rate(completion_tokens)/rate(this) = tokens/s.",
                                      ["deployment"], registry=r)
        self.decode_rate = Gauge("edgectl_agent_decode_tokens_per_second",
                                 "Decode speed (tokens/s) of the last request that decoded two tokens or more.",
                                 ["deployment"], registry=r)
        self.load_seconds = Gauge("edgectl_agent_model_load_seconds",
                                  "Seconds the last successful load of the deployment's artifact took.",
                                  ["deployment"], registry=r)
        self.active_artifact = Info("edgectl_agent_active_artifact", "Artifact each deployment serves.",
                                    ["deployment"], registry=r)
        self.swaps = Counter("edgectl_agent_swaps", "Successful switches to a new artifact.", ["deployment"],
                             registry=r)
        self.failed_activations = Counter("edgectl_agent_failed_activations",
                                          "Activations that failed to load or pass the smoke inference.",
                                          ["deployment"], registry=r)
        self.rollbacks = Counter("edgectl_agent_rollbacks",
                                 "Switches back to the previous artifact: asked by the control plane, or at start "
                                 "when the active artifact would not load.", ["deployment"], registry=r)
        self.last_deploy = Gauge("edgectl_agent_last_successful_deploy_timestamp_seconds",
                                 "Unix time of the deployment's last successful activation.", ["deployment"],
                                 registry=r)
        self.serving = Gauge("edgectl_agent_deployment_serving", "1 when the deployment serves its desired "
                             "artifact, else 0.", ["deployment"], registry=r)
        self.state = Gauge("edgectl_agent_deployment_state", "1 for the phase the deployment is in, 0 for the "
                           "others.", ["deployment", "state"], registry=r)
        self.live = LiveCollector(store_root)
        r.register(self.live)

    def set_active(self, deployment: str, artifact: ArtifactRef) -> None:
        self.active_artifact.labels(deployment=deployment).info(
            {"model": artifact.model, "format": artifact.format, "quant": artifact.quant, "digest": artifact.digest})

    def set_phase(self, deployment: str, phase: str) -> None:
        # Lifecycle counters exist at 0 from the deployment's first phase: Prometheus' increase() cannot see a
        # counter's first increment when the series appears with it (a first rollback would never alert).
        for counter in (self.swaps, self.failed_activations, self.rollbacks):
            counter.labels(deployment=deployment)
        self.serving.labels(deployment=deployment).set(1 if phase == "serving" else 0)
        for p in PHASES:
            self.state.labels(deployment=deployment, state=p).set(1 if p == phase else 0)

    def note_generation(self, deployment: str, tokens: int, seconds: float, *, decode_tokens: int) -> None:
        """Tokens generated by one request in ``seconds``; ``decode_tokens`` of them after the clock started."""
        self.completion_tokens.labels(deployment=deployment).inc(tokens)
        if seconds > 0:
            self.decode_seconds.labels(deployment=deployment).inc(seconds)
            if decode_tokens >= 2:
                self.decode_rate.labels(deployment=deployment).set(decode_tokens / seconds)

    def forget(self, deployment: str) -> None:
        for metric in (self.active_artifact, self.serving, self.load_seconds, self.decode_rate, self.last_deploy):
            try:
                metric.remove(deployment)
            except KeyError:
                pass
        for p in PHASES:
            try:
                self.state.remove(deployment, p)
            except KeyError:
                pass

    def exposition(self) -> bytes:
        """The text format, without the ``*_created`` series (one per counter/histogram child: they would double
        the series count and no query here needs them)."""
        return generate_latest(_WithoutCreated(self.registry))


class LiveCollector:
    """Values read at scrape time: agent info, backend up per deployment, requests running / waiting / refused
    per deployment (the admission queues), KV-cache usage per deployment, process RSS/CPU, store disk space."""

    def __init__(self, store_root: Path | None) -> None:
        self.store_root = store_root
        self.backends: Callable[[], Iterable[tuple[str, str, bool]]] = lambda: ()
        self.queues: Callable[[], Iterable[RequestQueue]] = lambda: ()
        # (deployment, loaded model) of every serving deployment: models that report KV-cache usage do
        self.models: Callable[[], Iterable[tuple[str, object]]] = lambda: ()
        # (device benchmark or None, [(deployment, its artifact's measured rates)]): edgectl_agent.benchmark
        self.benchmark: Callable[[], tuple] = lambda: (None, [])
        # (deployment, Prometheus text) of runtimes that serve their own metrics (vllm serve's vllm:* series)
        self.runtime_metrics: Callable[[], Iterable[tuple[str, str]]] = lambda: ()
        self._process = None

    def describe(self) -> list[Metric]:
        return []  # collected live; nothing to check for duplicates at registration

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("edgectl_agent_build_info", "edgectl-agent version (always 1).", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        up = GaugeMetricFamily("edgectl_agent_backend_up", "1 while a loaded model answers for the deployment "
                               "(its runtime is up), else 0.", labels=["deployment", "runtime"])
        backends = list(self.backends())
        for deployment, runtime, loaded in backends:
            up.add_metric([deployment, runtime], 1 if loaded else 0)
        yield up
        yield from self._queue_metrics({deployment for deployment, _, _ in backends})
        yield from self._kv_cache_metrics()
        yield from self._benchmark_metrics()
        yield from self._process_metrics()
        yield from self._scraped_runtime_metrics()
        if self.store_root is not None:
            try:
                usage = shutil.disk_usage(self.store_root)
            except OSError:
                return
            free = GaugeMetricFamily("edgectl_agent_store_disk_free_bytes",
                                     "Free bytes on the filesystem of the artifact store.")
            free.add_metric([], usage.free)
            yield free
            total = GaugeMetricFamily("edgectl_agent_store_disk_total_bytes",
                                      "Size of the filesystem of the artifact store.")
            total.add_metric([], usage.total)
            yield total

    def _queue_metrics(self, deployments: set[str]) -> Iterator[Metric]:
        running = GaugeMetricFamily("edgectl_agent_requests_running", "Generation requests the deployment's model "
                                    "is working on now.", labels=["deployment"])
        waiting = GaugeMetricFamily("edgectl_agent_requests_waiting", "Generation requests waiting in the "
                                    "deployment's queue now.", labels=["deployment"])
        rejected = CounterMetricFamily("edgectl_agent_requests_rejected", "Requests refused with 503 + Retry-After: "
                                       "the deployment's queue was full.", labels=["deployment"])
        for queue in self.queues():
            if queue.deployment in deployments:  # a removed deployment's queue is not reported
                running.add_metric([queue.deployment], queue.running)
                waiting.add_metric([queue.deployment], queue.waiting)
                rejected.add_metric([queue.deployment], queue.rejected)
        yield from (running, waiting, rejected)

    def _kv_cache_metrics(self) -> Iterator[Metric]:
        # No OpenTelemetry GenAI name exists for it; llama-server calls it llamacpp:kv_cache_usage_ratio, vLLM
        # vllm:kv_cache_usage_perc (docs/metrics.md).
        ratio = GaugeMetricFamily("edgectl_agent_kv_cache_usage_ratio", "Share of the deployment's KV cache "
                                  "(context_length x parallel tokens) holding tokens now: running requests and the "
                                  "prompts free slots keep for reuse.", labels=["deployment"])
        tokens = GaugeMetricFamily("edgectl_agent_kv_cache_tokens", "Tokens in the deployment's KV cache now.",
                                   labels=["deployment"])
        for deployment, model in self.models():
            usage = getattr(model, "kv_cache_usage", None)
            if usage is None:
                continue
            counts = usage()  # None: not known now (a supervised llama-server that did not answer)
            if counts is None:
                continue
            used, capacity = counts
            ratio.add_metric([deployment], used / capacity if capacity else 0.0)
            tokens.add_metric([deployment], used)
        yield from (ratio, tokens)

    def _benchmark_metrics(self) -> Iterator[Metric]:
        device, speeds = self.benchmark()
        if device is not None and device.memory_bandwidth_bytes_per_s:
            bw = GaugeMetricFamily("edgectl_agent_memory_bandwidth_bytes_per_second", "Memory bandwidth measured "
                                   "at enrolment (edgectl_agent.benchmark: concurrent copies, read + written).")
            bw.add_metric([], device.memory_bandwidth_bytes_per_s)
            yield bw
        prefill = GaugeMetricFamily("edgectl_agent_measured_prefill_tokens_per_second", "Prefill rate of the "
                                    "deployment's artifact, measured at its first activation.", labels=["deployment"])
        decode = GaugeMetricFamily("edgectl_agent_measured_decode_tokens_per_second", "Decode rate of the "
                                   "deployment's artifact, measured at its first activation.", labels=["deployment"])
        for deployment, speed in speeds:
            prefill.add_metric([deployment], speed.prefill_tokens_per_s)
            if speed.decode_tokens_per_s:
                decode.add_metric([deployment], speed.decode_tokens_per_s)
        yield from (prefill, decode)

    def _scraped_runtime_metrics(self) -> Iterator[Metric]:
        """A runtime server's own series (vLLM's vllm:*), each with the agent's ``deployment`` label added."""
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client.samples import Sample

        for deployment, text in self.runtime_metrics():
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError:
                continue  # a half-written page: the next scrape reads a whole one
            for family in families:
                out = Metric(family.name, family.documentation, family.type, family.unit)
                out.samples = [Sample(s.name, {**s.labels, "deployment": deployment}, s.value, s.timestamp,
                                      s.exemplar) for s in family.samples]
                yield out

    def _process_metrics(self) -> Iterator[Metric]:
        # psutil rather than prometheus_client's ProcessCollector: that one reads /proc, so it is empty on macOS.
        import psutil

        if self._process is None:
            self._process = psutil.Process()
        p = self._process
        try:
            with p.oneshot():
                rss, cpu, started = p.memory_info().rss, p.cpu_times(), p.create_time()
        except psutil.Error:
            return
        m = GaugeMetricFamily("process_resident_memory_bytes", "Resident memory of the agent process (models "
                              "included).")
        m.add_metric([], rss)
        yield m
        c = CounterMetricFamily("process_cpu_seconds", "User and system CPU time of the agent process.")
        c.add_metric([], cpu.user + cpu.system)
        yield c
        s = GaugeMetricFamily("process_start_time_seconds", "Start time of the agent process (Unix time).")
        s.add_metric([], started)
        yield s


class _WithoutCreated:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class MetricsMiddleware:
    """Counts requests and times them to the last body byte (so streaming responses are timed whole)."""

    def __init__(self, app: ASGIApp, metrics: AgentMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            if endpoint.startswith(TIMED_PREFIXES):
                self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)


router = APIRouter()


# A scrape asks supervised servers (llama-server, vLLM) for their own metrics over HTTP, which waits for their next
# decode step: it runs on one thread of its own, so it neither blocks the event loop (every stream would stall) nor
# queues behind inference calls waiting for the default pool's worker threads.
_SCRAPES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-scrape")


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    body = await asyncio.get_running_loop().run_in_executor(_SCRAPES, request.app.state.agent.metrics.exposition)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
