"""Prometheus metrics, in a registry per app (no process globals), and the ``/metrics`` router.

Labels are bounded: endpoint = the route template (or "unmatched"), status = HTTP code, deployment = a name the
control plane created. Nothing taken from a request body or URL ever becomes a label value.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from edgectl_agent.api import ArtifactRef

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgectl_agent_requests", "HTTP requests answered.", ["endpoint", "status"],
                                registry=r)
        self.latency = Histogram("edgectl_agent_request_duration_seconds",
                                 "Time from request to the end of the response body.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("edgectl_agent_time_to_first_token_seconds",
                              "Time from request to the first generated token (streaming).", ["deployment"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.prompt_tokens = Counter("edgectl_agent_prompt_tokens", "Prompt tokens processed.", ["deployment"],
                                     registry=r)
        self.completion_tokens = Counter("edgectl_agent_completion_tokens", "Tokens generated.", ["deployment"],
                                         registry=r)
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
        self.serving = Gauge("edgectl_agent_deployment_serving", "1 when the deployment serves its desired "
                             "artifact, else 0.", ["deployment"], registry=r)

    def set_active(self, deployment: str, artifact: ArtifactRef) -> None:
        self.active_artifact.labels(deployment=deployment).info(
            {"model": artifact.model, "format": artifact.format, "quant": artifact.quant, "digest": artifact.digest})

    def forget(self, deployment: str) -> None:
        for metric in (self.active_artifact, self.serving, self.load_seconds):
            try:
                metric.remove(deployment)
            except KeyError:
                pass


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
            self.metrics.latency.labels(endpoint=endpoint).observe(time.perf_counter() - start)


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(request.app.state.agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)
