"""DNS rebinding guard: an agent bound to loopback answers only requests addressed to a loopback name.

A web page from another site can make the browser of someone on the device send requests to 127.0.0.1 by having
its own host name resolve there (DNS rebinding). The browser still sends the site's name in the ``Host`` header, so
refusing every ``Host`` that is not a loopback address or ``localhost`` stops that, on every path (the serving
endpoints are open on loopback). edgectl's own clients address the agent as ``127.0.0.1:<port>``: the local
transport, the SSH direct-tcpip channel, ``docker exec`` and the Ansible ``uri`` tasks.

An agent listening beyond loopback (``--allow-remote``) is reached by names this guard cannot know; there every
endpoint but ``/healthz`` needs the token instead, so ``create_app`` installs this only on loopback.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from edgectl_agent.errors import AgentError

# host[:port] or [v6][:port]; the port part is checked, not used (the socket decides which port answered).
_HOST = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]{2,45})\]|(?P<name>[A-Za-z0-9.\-]{1,253}))(?::[0-9]{1,5})?")


def is_loopback_host(host: str) -> bool:
    """True when a ``Host`` header value names this machine's loopback: ``localhost``, ``127.0.0.0/8`` or
    ``[::1]``, with or without a port. Anything else (other names, other addresses, malformed values) is False."""
    m = _HOST.fullmatch(host)
    if m is None:
        return False
    if m.group("v6") is not None:
        try:
            return ipaddress.IPv6Address(m.group("v6")).is_loopback
        except ValueError:
            return False
    name = m.group("name")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback  # strict dotted quad: '127.1' or '0x7f.0.0.1' are refused
    except ValueError:
        return False


class LoopbackHostMiddleware:
    """Pure ASGI middleware: 421 with the agent's error body for a request whose ``Host`` is not loopback."""

    def __init__(self, app: ASGIApp, *, listen: str) -> None:
        self.app = app
        self.listen = listen  # the address the agent listens on, for the message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        hosts = [value for key, value in scope["headers"] if key == b"host"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else None
        if host is not None and is_loopback_host(host):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":  # the agent has no websocket routes; close before accepting (403)
            await send({"type": "websocket.close", "code": 1008})
            return
        if host is None:
            what = "no Host header" if not hosts else f"{len(hosts)} Host headers"
        else:
            what = f"the Host header {host[:100]!r}, which is not a loopback name"
        err = AgentError(f"request refused: {what}; this agent listens on {self.listen} and answers only requests "
                         "addressed to 127.0.0.1, [::1] or localhost (a guard against DNS rebinding)",
                         status=421, type="misdirected_request", param="Host",
                         hint="address the agent as http://127.0.0.1:<port> (edgectl and its transports do); to "
                              "serve other machines start it with --host <address> --allow-remote, which makes "
                              "every endpoint but /healthz require the token")
        await JSONResponse(err.body(), status_code=err.status)(scope, receive, send)
