"""HTTP over SSH channels: an httpx transport whose TCP connections are paramiko ``direct-tcpip`` channels.

The agent listens on the device's 127.0.0.1 only. Each HTTP connection is a channel opened through the device's
sshd to that address, so nothing listens on the control machine either (no local port forward to guard).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import httpcore
import httpx

# Our side's receive window: large enough that a streamed response (token stream, /metrics) never waits on adjusts.
CHANNEL_WINDOW_BYTES = 16 * 1024 * 1024


class ChannelStream(httpcore.NetworkStream):
    def __init__(self, chan: Any) -> None:
        self._chan = chan

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._chan.settimeout(timeout)
        try:
            return self._chan.recv(max_bytes)
        except socket.timeout as e:
            raise httpcore.ReadTimeout(str(e) or "read timed out") from e
        except (OSError, EOFError) as e:  # the SSH session dropped under the channel
            raise httpcore.ReadError(str(e) or "the SSH connection was closed") from e

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._chan.settimeout(timeout)
        try:
            # a memoryview: paramiko's sendall re-slices what is left after every (<= 32 KiB) packet, which on bytes
            # copies the rest of a multi-MiB upload chunk each time
            self._chan.sendall(memoryview(buffer))
        except socket.timeout as e:
            raise httpcore.WriteTimeout(str(e) or "write timed out") from e
        except (OSError, EOFError) as e:
            raise httpcore.WriteError(str(e) or "the SSH connection was closed") from e

    def close(self) -> None:
        self._chan.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS is not used on the agent's loopback channel")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # httpcore drops an idle pooled connection that reads as readable (closed)
            tr = self._chan.get_transport()
            return (self._chan.closed or self._chan.eof_received or self._chan.recv_ready()
                    or tr is None or not tr.is_active())
        return None


class ChannelBackend(httpcore.NetworkBackend):
    """Opens every "TCP connection" as a direct-tcpip channel: (host, port) are as the device resolves them."""

    def __init__(self, open_channel: Callable[..., Any]) -> None:
        self._open_channel = open_channel  # SshTransport.open_channel: reconnects and retries transient failures

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        import paramiko

        from edgectl.errors import EdgectlError

        try:
            chan = self._open_channel(host, port, window_size=CHANNEL_WINDOW_BYTES, timeout=timeout)
        except EdgectlError as e:  # the SSH session could not be (re)established
            raise httpcore.ConnectError(e.message) from e
        except paramiko.ChannelException as e:  # the device refused: nothing listens there
            raise httpcore.ConnectError(f"the device refused a connection to {host}:{port}: {e}") from e
        except (OSError, paramiko.SSHException) as e:
            raise httpcore.ConnectError(f"cannot open an SSH channel to {host}:{port}: {e}") from e
        return ChannelStream(chan)

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not reachable through this transport")


class ChannelTransport(httpx.HTTPTransport):
    """httpx's own transport (exception mapping, keep-alive pool) over ChannelBackend."""

    def __init__(self, open_channel: Callable[..., Any], *, device: str) -> None:
        # verify=False only spares loading the CA bundle (~10 ms a transport, a fleet's observe makes one per device):
        # no TLS ever runs on these channels (ChannelStream.start_tls refuses), the SSH session protects them
        super().__init__(verify=False)
        self.device = device
        self._pool = httpcore.ConnectionPool(network_backend=ChannelBackend(open_channel), max_connections=10,
                                             max_keepalive_connections=4, keepalive_expiry=30.0)
