"""The device token: created once with mode 0600, compared in constant time."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from fastapi import Request

from edgectl_agent.errors import AgentError, Unauthorized

log = logging.getLogger(__name__)


def ensure_token(path: Path) -> str:
    """Read the token at ``path``, creating it (0600, never overwriting) when it does not exist yet."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(path)
    except OSError as e:
        raise AgentError(f"cannot create the token file {path}: {e.strerror}",
                         hint="make the agent's root writable by the agent's user, or set --root") from e
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    log.info("created device token %s", path)
    return token


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
        mode = path.stat().st_mode & 0o077
    except OSError as e:
        raise AgentError(f"cannot read the token file {path}: {e.strerror}",
                         hint="run the agent as the user owning its root, or fix the file's permissions") from e
    if not token:
        raise AgentError(f"the token file {path} is empty",
                         hint="delete it; the agent creates a new token at its next start")
    if mode:
        log.warning("token file %s is readable by other users (mode %o); run: chmod 600 %s",
                    path, path.stat().st_mode & 0o777, path)
    return token


def bearer_matches(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


def require_token(request: Request) -> None:
    """FastAPI dependency: 401 unless ``Authorization: Bearer <device token>``."""
    agent = request.app.state.agent
    header = request.headers.get("authorization")
    if not bearer_matches(header, agent.token):
        what = "missing" if not header else "wrong"
        raise Unauthorized(f"{what} bearer token for {request.url.path}",
                           hint=f"send 'Authorization: Bearer <token>' with the token from {agent.settings.token_path} "
                                "(edgectl-agent token --root <root> prints it)")
