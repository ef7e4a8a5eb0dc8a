"""The agent's FastAPI app: ``create_app(settings, runtimes)``. All state lives on ``app.state.agent``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgectl_agent import __version__, control, kserve, metrics, ollama, openai
from edgectl_agent.auth import ensure_token, require_token
from edgectl_agent.deployments import Deployments
from edgectl_agent.admission import Admission
from edgectl_agent.errors import AgentError
from edgectl_agent.facts import start_openvino_probe
from edgectl_agent.hosts import LoopbackHostMiddleware
from edgectl_agent.metrics import AgentMetrics, MetricsMiddleware
from edgectl_agent.runtimes import Runtime, default_runtimes
from edgectl_agent.settings import AgentSettings
from edgectl_agent.signing import Verifier
from edgectl_agent.store import ArtifactStore, StateFile

log = logging.getLogger(__name__)


@dataclass
class Agent:
    """Everything one running agent holds."""

    settings: AgentSettings
    token: str
    store: ArtifactStore
    deployments: Deployments
    metrics: AgentMetrics
    admission: Admission
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    uploads_in_progress: set[str] = field(default_factory=set)
    recovery: asyncio.Task | None = None
    pulling: asyncio.Task | None = None  # pull mode's loop (edgectl_agent.pull)


def create_app(settings: AgentSettings, runtimes: dict[str, Runtime] | None = None) -> FastAPI:
    """Build the agent app. Reads/creates the token and the store under ``settings.root``; loads the deployments
    recorded in state.json in the background once the server starts (``/readyz`` says when they serve)."""
    store = ArtifactStore(settings.root)
    state_file = StateFile(settings.root)
    state_file.load()  # fail now, with a hint, on a corrupt state file
    agent_metrics = AgentMetrics(store_root=settings.root)
    # A configured key that cannot be loaded still makes a Verifier: one that refuses everything.
    verifier = Verifier(settings.verify_key_file) if settings.verify_key_file is not None else None
    agent = Agent(settings=settings, token=ensure_token(settings.token_path), store=store,
                  deployments=Deployments(settings, store, state_file,
                                          default_runtimes() if runtimes is None else runtimes, agent_metrics,
                                          verifier=verifier),
                  metrics=agent_metrics, admission=Admission(settings.queue_per_slot))
    agent_metrics.live.backends = agent.deployments.backends
    agent_metrics.live.queues = lambda: list(agent.admission.queues.values())
    agent_metrics.live.models = lambda: [(name, s.model) for name, s in list(agent.deployments.serving.items())]
    agent_metrics.live.runtime_metrics = lambda: [  # vllm serve's own /metrics (edgectl_agent.runtimes.vllm)
        (name, s.model.scrape_metrics()) for name, s in list(agent.deployments.serving.items())
        if hasattr(s.model, "scrape_metrics")]

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        start_openvino_probe()  # facts name OpenVINO's devices; asking takes a second, so ask before anyone waits
        agent.recovery = asyncio.create_task(agent.deployments.recover(), name="recover-deployments")
        if settings.pull_config is not None:
            from edgectl_agent.pull import start_pulling

            agent.pulling = asyncio.create_task(start_pulling(agent), name="pull")
        try:
            yield
        finally:
            if agent.pulling is not None:
                agent.pulling.cancel()
                with contextlib.suppress(BaseException):
                    await agent.pulling
            if not agent.recovery.done():
                agent.recovery.cancel()
            with contextlib.suppress(BaseException):
                await agent.recovery
            await agent.deployments.close()

    # openapi_url=None: the document is served below, behind the same rule as the serving endpoints.
    app = FastAPI(title="edgectl-agent", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.agent = agent
    app.add_middleware(MetricsMiddleware, metrics=agent_metrics)
    if settings.loopback:  # added last = outermost: a foreign Host is refused before anything else runs
        app.add_middleware(LoopbackHostMiddleware, listen=settings.host)
    _install_error_handlers(app)

    # Serving endpoints are open on loopback (only this machine, or a tunnel, reaches them, and the Host guard
    # above refuses pages of other sites); beyond it they need the token like the control endpoints. Control
    # endpoints always need it; /healthz never does.
    serving_deps = [] if settings.loopback else [Depends(require_token)]
    app.include_router(control.router)
    app.include_router(openai.router, dependencies=serving_deps)
    app.include_router(ollama.router, dependencies=serving_deps)
    app.include_router(kserve.router, dependencies=serving_deps)
    app.include_router(metrics.router, dependencies=serving_deps)

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/openapi.json", dependencies=serving_deps, include_in_schema=False)
    def openapi_document() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/readyz", dependencies=serving_deps)
    def readyz(request: Request) -> JSONResponse:
        reasons = request.app.state.agent.deployments.not_ready()
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready", "reasons": []})

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentError)
    async def agent_error(request: Request, exc: AgentError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else getattr(exc, "headers", None)
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI clients expect 400 with an error object, not FastAPI's 422 list.
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            message = f"the request body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            param = None
        else:
            loc = [str(p) for p in first.get("loc", ()) if p != "body"]
            param = ".".join(loc) or None
            message = "; ".join(_describe(e) for e in errors[:5])
        whole_body = first.get("type") == "json_invalid" or (tuple(first.get("loc", ())) == ("body",)
                                                            and first.get("type") != "value_error")
        hint = ("send a JSON object with Content-Type: application/json" if whole_body else
                "fix the field named in the message; the API follows the OpenAI reference for /v1 and "
                "edgectl_agent.api for /control/v1")
        err = AgentError(f"invalid request to {request.url.path}: {message}", status=400,
                         type="invalid_request_error", param=param, hint=hint)
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = "see GET /v1/models and the control endpoints in edgectl_agent.api" if exc.status_code == 404 else None
        err = AgentError(f"{exc.detail} ({request.method} {request.url.path})", status=exc.status_code,
                         type="not_found_error" if exc.status_code == 404 else "invalid_request_error", hint=hint)
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        err = AgentError(f"internal error on {request.method} {request.url.path}: {type(exc).__name__}: {exc}",
                         hint="this is a bug in edgectl-agent; the traceback is in the agent's log")
        return JSONResponse(err.body(), status_code=500)


def _describe(error: dict) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
    return f"{loc}: {error.get('msg', 'invalid')}"
