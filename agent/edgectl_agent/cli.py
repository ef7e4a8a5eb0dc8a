"""``edgectl-agent``: ``serve`` runs the agent, ``token`` prints the device token.

Exit codes: 0 ok, 1 failure while running, 2 bad invocation (bad flag, port in use, refused bind address).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path

from pydantic import ValidationError

from edgectl_agent import __version__
from edgectl_agent.errors import AgentError


class UsageError(Exception):
    """Bad invocation: printed as one line plus a hint, exit 2."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgectl-agent", description="On-device agent for edgectl: verifies, swaps "
                                "in and serves quantized models offline.")
    p.add_argument("--version", action="version", version=f"edgectl-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the agent (control API, OpenAI-compatible API, /metrics)")
    serve.add_argument("--root", type=Path, help="state directory (default: $EDGECTL_AGENT_ROOT or "
                       "/var/lib/edgectl-agent)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8088)")
    serve.add_argument("--allow-remote", action="store_true", default=None,
                       help="permit a non-loopback --host; serving endpoints then require the token too")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--verify-key-file", type=Path,
                       help="activate only deployments signed by this ed25519 public key (PEM); if the file is "
                            "missing or invalid, every deployment is refused")
    serve.add_argument("--pull-config", type=Path,
                       help="pull mode: poll the OCI registry named in this file (`edgectl enroll DEVICE --out "
                            "FILE`) for this device's signed desired state")
    token = sub.add_parser("token", help="print the device token (created if missing)")
    token.add_argument("--root", type=Path, help="state directory, as given to serve")
    return p


def settings_from_args(args: argparse.Namespace):
    from edgectl_agent.settings import AgentSettings

    overrides = {k: v for k, v in {"root": args.root, "host": getattr(args, "host", None),
                                   "port": getattr(args, "port", None),
                                   "allow_remote": getattr(args, "allow_remote", None),
                                   "log_level": getattr(args, "log_level", None),
                                   "verify_key_file": getattr(args, "verify_key_file", None),
                                   "pull_config": getattr(args, "pull_config", None)}.items() if v is not None}
    try:
        return AgentSettings(**overrides)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"invalid setting {field}: {first['msg']}",
                         hint=f"fix --{field.replace('_', '-')} or EDGECTL_AGENT_{field.upper()}") from e


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a busy port is a clear error before anything starts; uvicorn serves on this socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP. Without it
    # every keep-alive response waits ~40 ms (Nagle on the body write against the client's delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use",
                             hint=f"stop the process using it, or choose another port: --port {port + 1}") from e
        if e.errno in (errno.EACCES, errno.EPERM):
            raise UsageError(f"not permitted to listen on {host}:{port}",
                             hint="use a port above 1023, e.g. --port 8088") from e
        raise UsageError(f"cannot listen on {host}:{port}: {e.strerror}",
                         hint="check --host is an address of this machine (default 127.0.0.1)") from e
    sock.set_inheritable(True)
    return sock


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from edgectl_agent.app import create_app

    settings = settings_from_args(args)
    logging.basicConfig(stream=sys.stderr, level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.loopback and not settings.allow_remote:
        raise UsageError(f"refusing to listen on non-loopback address {settings.host}",
                         hint="the agent is reached through edgectl's transport on 127.0.0.1; to expose it anyway "
                              "add --allow-remote (serving endpoints then require the token)")
    if settings.pull_config is not None:
        settings = pull_settings(settings)
    sock = bind_socket(settings.host, settings.port)
    app = create_app(settings)
    logging.getLogger("edgectl_agent").info("edgectl-agent %s on http://%s:%d, root %s, token %s", __version__,
                                            settings.host, settings.port, settings.root, settings.token_path)
    uvicorn.Server(server_config(app, settings)).run(sockets=[sock])
    return 0


def server_config(app, settings):
    """uvicorn's configuration of the agent's API: httptools and uvloop where installed (``auto``; the extra
    fast-http), else h11 and asyncio, unless the settings ``http_parser`` / ``event_loop`` name one."""
    import uvicorn

    return uvicorn.Config(app, log_config=None, access_log=settings.access_log, log_level=settings.log_level,
                          timeout_graceful_shutdown=10, http=settings.http_parser, loop=settings.event_loop)


def pull_settings(settings):
    """Pull mode verifies every state and deployment with the fleet key in the pull config: it is written to
    <root>/pull-verify-key.pem and used as the verify key (an explicit --verify-key-file must hold the same key)."""
    from edgectl_agent.pull import load_config
    from edgectl_agent.store import write_atomic

    config = load_config(settings.pull_config)
    pem = config.verify_key_pem.encode()
    if settings.verify_key_file is not None:
        try:
            same = settings.verify_key_file.read_bytes().strip() == pem.strip()
        except OSError:
            same = False
        if not same:
            raise UsageError(f"--verify-key-file {settings.verify_key_file} is not the fleet key in "
                             f"{settings.pull_config}", hint="leave --verify-key-file out in pull mode: the pull "
                             "config carries the key")
        return settings
    settings.root.mkdir(parents=True, exist_ok=True)
    path = settings.root / "pull-verify-key.pem"
    write_atomic(path, pem)
    return settings.model_copy(update={"verify_key_file": path})


def print_token(args: argparse.Namespace) -> int:
    from edgectl_agent.auth import ensure_token

    settings = settings_from_args(args)
    print(ensure_token(settings.token_path))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = {"serve": serve, "token": print_token}[args.command](args)
    except UsageError as e:
        print(f"edgectl-agent: error: {e.message}; to fix: {e.hint}", file=sys.stderr)
        code = 2
    except AgentError as e:
        print(f"edgectl-agent: error: {e.message}" + (f"\n  hint: {e.hint}" if e.hint else ""), file=sys.stderr)
        if os.environ.get("EDGECTL_DEBUG") == "1":
            raise
        code = 1
    sys.exit(code)
