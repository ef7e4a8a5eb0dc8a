"""Control API under /control/v1 (contract in ``api.py``). Every endpoint needs the device token."""

from __future__ import annotations

import anyio.to_thread
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from edgectl_agent import __version__
from edgectl_agent.api import CONTROL_PREFIX, NAME_PATTERN, AgentState, DeploymentState, DesiredDeployment, Facts, UploadStatus
from edgectl_agent.auth import require_token
from edgectl_agent.errors import BadRequest, Conflict
from edgectl_agent.facts import reported_facts
from edgectl_agent.store import digest_hex

router = APIRouter(prefix=CONTROL_PREFIX, dependencies=[Depends(require_token)])
# A deployment name in a URL follows the same rule as in a body (never a path, never '..').
DeploymentName = Annotated[str, Path(pattern=NAME_PATTERN, description="Deployment name.")]


@router.get("/facts")
def facts(request: Request) -> Facts:
    agent = request.app.state.agent
    verifier = agent.deployments.verifier
    # The agent's first report measures the device (edgectl_agent.benchmark, once); later ones read it back.
    return reported_facts(agent.settings.root, agent.deployments.benchmarks,
                          verify_key_id=verifier.fact if verifier is not None else None)


@router.get("/state")
def state(request: Request) -> AgentState:
    agent = request.app.state.agent
    return AgentState(agent_version=__version__, started_at=agent.started_at,
                      deployments=agent.deployments.snapshot(), artifacts=agent.store.digests())


@router.get("/artifacts/{digest}")
def upload_status(digest: str, request: Request) -> UploadStatus:
    digest_hex(digest)
    return request.app.state.agent.store.status(digest)


@router.put("/artifacts/{digest}")
async def upload(digest: str, request: Request, offset: int = Query(0, description="Where this chunk starts.")
                 ) -> UploadStatus:
    digest_hex(digest)
    agent = request.app.state.agent
    store = agent.store
    size = _int_header(request, "x-edgectl-size")
    length = _int_header(request, "content-length")
    if digest in agent.uploads_in_progress:
        raise Conflict(f"another upload of {digest} is in progress", type="upload_in_progress",
                       hint=f"wait for it, then GET /control/v1/artifacts/{digest} and resume from received_bytes")
    agent.uploads_in_progress.add(digest)
    try:
        total = store.begin(digest, offset, size, length)
        if store.has(digest):
            return store.status(digest)  # already complete: nothing to receive
        await store.receive(digest, offset, total, request.stream())
        return await anyio.to_thread.run_sync(store.finish, digest, total)
    finally:
        agent.uploads_in_progress.discard(digest)


@router.put("/deployments/{name}")
async def put_deployment(name: DeploymentName, desired: DesiredDeployment, request: Request) -> DeploymentState:
    if desired.name != name:
        raise BadRequest(f"the URL names deployment '{name}' but the body names '{desired.name}'",
                         param="name", hint="send the same name in both")
    return await request.app.state.agent.deployments.activate(desired)


@router.delete("/deployments/{name}")
async def delete_deployment(name: DeploymentName, request: Request) -> DeploymentState:
    return await request.app.state.agent.deployments.remove(name)


def _int_header(request: Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"header {name} must be an integer, got {raw[:40]!r}", param=name,
                         hint="send the size in bytes") from None
