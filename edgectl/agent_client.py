"""HTTP client for an agent's control API (schemas in ``edgectl_agent.api``).

A transport gives us a base URL that reaches the agent's loopback port (directly for the local transport, through a
tunnel for remote ones); this class only speaks HTTP. httpx errors become TransportError / AgentError here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from edgectl_agent.api import (
    CONTROL_PREFIX,
    TIMINGS_HEADER,
    AgentState,
    DeploymentState,
    DesiredDeployment,
    Facts,
    UploadStatus,
)

from edgectl.errors import AgentError, TransportError

UPLOAD_CHUNK = 4 * 1024 * 1024
# After a cut, the agent may still be writing the bytes that were in flight (it answers 409: upload in progress or
# another offset) until it notices the dropped connection: wait for it, doubling from this, a bounded number of times.
UPLOAD_RETRY_FIRST_S = 0.25
UPLOAD_RETRY_MAX_S = 4.0


@dataclass(frozen=True)
class SmokeResult:
    """The agent's own timings of a smoke request (what its metrics record), so the link to the device (an SSH
    channel, a jump host) never counts; all None for a tensor model or an agent too old to report them."""

    ttft_s: float | None  # from the request's arrival at the agent to its first generated token
    tokens: int | None  # tokens generated
    decode_s: float | None  # from the first token to the last
    text: str | None = None  # the answer's text (LLMs)

    @property
    def tokens_per_s(self) -> float | None:
        return (self.tokens - 1) / self.decode_s if self.tokens and self.tokens > 1 and self.decode_s else None


class AgentClient:
    def __init__(self, base_url: str, token: str, *, device: str, timeout: float = 30.0,
                 activate_timeout: float = 600.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.device = device
        self._activate_timeout = activate_timeout
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {token}"}, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "AgentClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            try:
                r = self._http.request(method, path, **kw)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError):
                if method != "GET":
                    raise
                # a reads-only request on a connection that dropped under it (a cut SSH session): once more,
                # on a fresh connection
                r = self._http.request(method, path, **kw)
        except httpx.TimeoutException as e:
            raise TransportError(f"device '{self.device}': agent at {self.base_url} timed out on {method} {path}",
                                 hint="the device may be overloaded; retry, or check the agent's log") from e
        except httpx.HTTPError as e:
            raise TransportError(f"device '{self.device}': cannot reach the agent at {self.base_url}: {e}",
                                 hint="check that the agent runs (edgectl status) and the agent port is right") from e
        if r.status_code >= 400:
            raise _agent_error(self.device, method, path, r)
        return r

    # -- endpoints --------------------------------------------------------------------------------------------
    def health(self) -> dict:
        return self._request("GET", "/healthz").json()

    def facts(self) -> Facts:
        return Facts.model_validate(self._request("GET", f"{CONTROL_PREFIX}/facts").json())

    def state(self) -> AgentState:
        return AgentState.model_validate(self._request("GET", f"{CONTROL_PREFIX}/state").json())

    def metrics(self, *, timeout: float | None = None) -> str:
        """The agent's /metrics in the Prometheus text format."""
        kw = {} if timeout is None else {"timeout": timeout}
        return self._request("GET", "/metrics", **kw).text

    def upload_status(self, digest: str) -> UploadStatus:
        return UploadStatus.model_validate(self._request("GET", f"{CONTROL_PREFIX}/artifacts/{digest}").json())

    def upload(self, digest: str, path: Path, *, progress: Callable[[int, int], None] | None = None,
               retries: int = 5) -> UploadStatus:
        """Upload ``path`` so the agent holds ``digest``; resumes from what the agent already has.

        A cut connection is retried from the agent's received byte count (never from zero), with backoff, at
        most ``retries`` times. The agent verifies the sha256 when the last byte arrives; a mismatch is an
        AgentError (and the agent deletes the bytes).
        """
        size = path.stat().st_size
        attempt = 0
        while True:
            if attempt:
                time.sleep(min(UPLOAD_RETRY_MAX_S, UPLOAD_RETRY_FIRST_S * 2 ** (attempt - 1)))
            status = self.upload_status(digest)
            if status.complete:
                if progress:
                    progress(size, size)
                return status
            offset = status.received_bytes
            if offset > size:
                raise AgentError(f"device '{self.device}': agent holds {offset} bytes of {digest}, more than the "
                                 f"file's {size}", hint="the local artifact changed; run `edgectl build` again")
            try:
                r = self._request("PUT", f"{CONTROL_PREFIX}/artifacts/{digest}", params={"offset": offset},
                                  headers={"X-Edgectl-Size": str(size), "Content-Type": "application/octet-stream",
                                           "Content-Length": str(size - offset)},
                                  content=_read_from(path, offset, size, progress),
                                  timeout=httpx.Timeout(30.0, read=600.0))
                return UploadStatus.model_validate(r.json())
            except TransportError:
                attempt += 1
                if attempt > retries:
                    raise
            except AgentError as e:
                if e.status != 409:  # 409: the agent still finishes the cut upload; anything else is final
                    raise
                attempt += 1
                if attempt > retries:
                    raise

    def upload_blobs(self, blobs: list[tuple[str, Path]], *,
                     progress: Callable[[int, int], None] | None = None) -> None:
        """Upload an artifact's blobs in order (a directory artifact: its files, then its manifest; see
        ArtifactStore.blobs_of), each resumable and verified; ``progress`` sees bytes over all of them."""
        sizes = [path.stat().st_size for _, path in blobs]
        total, base = sum(sizes), 0
        for (digest, path), size in zip(blobs, sizes):
            self.upload(digest, path, progress=(lambda d, _t, _b=base: progress(_b + d, total)) if progress else None)
            base += size

    def put_deployment(self, desired: DesiredDeployment) -> DeploymentState:
        r = self._request("PUT", f"{CONTROL_PREFIX}/deployments/{desired.name}",
                          content=desired.model_dump_json(), headers={"Content-Type": "application/json"},
                          timeout=httpx.Timeout(30.0, read=self._activate_timeout))
        return DeploymentState.model_validate(r.json())

    def smoke(self, name: str, *, kind: str = "llm", max_tokens: int = 8, prompt: str = "Say hello.") -> SmokeResult:
        """One real request to a serving deployment, as a client would send it: a streamed chat completion for an
        LLM, asking the agent for its own timings of it; an embedding request for an embedding model (``kind``
        "embedding": task: embedding); the KServe readiness endpoint for a tensor model."""
        if kind == "embedding":
            return self._smoke_embedding(name, prompt)
        if kind != "llm":
            self._request("GET", f"/v2/models/{name}/ready")
            return SmokeResult(ttft_s=None, tokens=None, decode_s=None)
        body = {"model": name, "stream": True, "max_tokens": max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": prompt}]}
        pieces: list[str] = []
        timings: dict = {}
        try:
            with self._http.stream("POST", "/v1/chat/completions", json=body, headers={TIMINGS_HEADER: "1"},
                                   timeout=httpx.Timeout(30.0, read=120.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    raise _agent_error(self.device, "POST", "/v1/chat/completions", r)
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    timings = chunk.get("timings") or timings
                    content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                    if content:
                        pieces.append(content)
        except httpx.HTTPError as e:
            raise TransportError(f"device '{self.device}': smoke request to '{name}' failed: {e}",
                                 hint="see the agent's log") from e
        if not pieces:
            raise AgentError(f"device '{self.device}': the smoke request to '{name}' produced no text",
                             hint="the model answered with nothing; check the artifact and the agent's log")
        return SmokeResult(ttft_s=timings.get("ttft_s"), tokens=timings.get("tokens"),
                           decode_s=timings.get("decode_s"), text="".join(pieces))

    def _smoke_embedding(self, name: str, text: str) -> SmokeResult:
        out = self._request("POST", "/v1/embeddings", json={"model": name, "input": text}).json()
        vector = ((out.get("data") or [{}])[0]).get("embedding")
        if not vector:
            raise AgentError(f"device '{self.device}': the embedding smoke request to '{name}' returned no vector",
                             hint="check that the artifact is an embedding model and see the agent's log")
        return SmokeResult(ttft_s=None, tokens=None, decode_s=None)

    def delete_deployment(self, name: str) -> DeploymentState:
        return DeploymentState.model_validate(
            self._request("DELETE", f"{CONTROL_PREFIX}/deployments/{name}").json())


def _read_from(path: Path, offset: int, size: int,
               progress: Callable[[int, int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        f.seek(offset)
        sent = offset
        while chunk := f.read(UPLOAD_CHUNK):
            sent += len(chunk)
            yield chunk
            if progress:
                progress(sent, size)


def _agent_error(device: str, method: str, path: str, r: httpx.Response) -> AgentError:
    message, hint = r.text.strip()[:500], None
    try:
        body = r.json()
        err = body.get("error", body) if isinstance(body, dict) else {}
        if isinstance(err, dict):
            message = err.get("message") or err.get("detail") or message
            hint = err.get("hint")
    except ValueError:
        pass
    if r.status_code == 401:
        return _foreign_agent_error(device, method, path, r)
    return AgentError(f"device '{device}': agent answered {r.status_code} to {method} {path}: {message}",
                      hint=hint, status=r.status_code)


def _foreign_agent_error(device: str, method: str, path: str, r: httpx.Response) -> AgentError:
    """401: the agent answering is not the one whose token edgectl read (another edgectl home's, another
    agent_dir's, or one whose token changed since), so nothing edgectl asks of it can work."""
    url = r._request.url if r._request is not None else None  # noqa: SLF001 - a response built without one
    where = f"on port {url.port}" if url is not None and url.port else f"at {url or 'the device'}"
    return AgentError(f"device '{device}': the agent {where} is not this edgectl's: its token differs from the one "
                      f"edgectl read for this device (401 to {method} {path})",
                      hint="another agent (started by another edgectl home, or from another agent_dir) or another "
                           "program holds the device's agent port. To fix: stop it, or give this device another "
                           "port (`agent: {port: N}` in the fleet manifest), or point transport.agent_dir at that "
                           "agent's folder; a local agent's token is read from its root under EDGECTL_HOME",
                      status=r.status_code)


def read_token(token_file: Path, *, device: str) -> str:
    try:
        return token_file.read_text().strip()
    except OSError as e:
        raise TransportError(f"device '{device}': cannot read the agent token {token_file}: {e.strerror}",
                             hint="start the agent once so it creates its token (edgectl apply does this)") from e
