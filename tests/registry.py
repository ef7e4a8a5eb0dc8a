"""A real CNCF Distribution registry (Debian's docker-registry) on 127.0.0.1 for the pull-mode tests.

The test writes its config: filesystem storage under a temp folder, htpasswd auth (bcrypt lines written with
`htpasswd -B`, apache2-utils), a free port. ``scripts/setup.sh test`` installs both packages; a missing one fails
the test (never a silent skip)."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

REGISTRY_BIN = "/usr/bin/docker-registry"
CONFIG = """\
version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {root}}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{port}
"""
AUTH = """\
auth:
  htpasswd: {{realm: edgectl-test, path: {htpasswd}}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """``users``: name -> password (htpasswd; empty: no auth). Start/stop keeps its storage, so a restarted registry
    serves the same content."""

    def __init__(self, base: Path, users: dict[str, str], *, proxy_of: tuple[str, str, str] | None = None,
                 token: TokenService | None = None) -> None:
        """``proxy_of``: (origin URL, user, password): a pull-through cache (a site mirror) of that registry.
        ``token``: Bearer-token auth through that token service instead of htpasswd (``users`` then unused)."""
        missing = [b for b in (REGISTRY_BIN, "htpasswd") if shutil.which(b) is None]
        if missing:
            raise AssertionError(f"{', '.join(missing)} not installed: run `scripts/setup.sh test` (Debian packages "
                                 "docker-registry and apache2-utils)")
        base.mkdir(parents=True, exist_ok=True)
        self.base, self.port = base, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        htpasswd = base / "htpasswd"
        for i, (user, password) in enumerate(users.items()):
            subprocess.run(["htpasswd", "-B", "-b", *(["-c"] if i == 0 else []), str(htpasswd), user, password],
                           check=True, capture_output=True)
        self.config = base / "config.yml"
        config = CONFIG.format(root=base / "storage", port=self.port)
        if token is not None:
            config += token.registry_config()
        elif users:  # none: anonymous (Distribution 2.8's proxy mode logs in upstream only with token auth)
            config += AUTH.format(htpasswd=htpasswd)
        if proxy_of is not None:
            url, user, password = proxy_of
            config += f"proxy: {{remoteurl: {url}, username: {user}, password: {password}}}\n"
        self.config.write_text(config)
        self.log = base / "registry.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Registry:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"http://{self.address}/v2/", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"docker-registry did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


class StatusPath:
    """The pull devices' status path for real: a Prometheus Pushgateway the agents report to and a Prometheus that
    scrapes it every second (``honor_labels``); ``pushgateway`` and ``prometheus`` are their base URLs."""

    def __init__(self, base: Path) -> None:
        from tests.integration.conftest import free_port
        from tests.integration.test_metrics_fleet import Background, prometheus_argv, pushgateway_argv

        for binary in ("prometheus", "prometheus-pushgateway"):
            if shutil.which(binary) is None:
                raise AssertionError(f"{binary} missing: run `scripts/setup.sh test` (Debian package {binary})")
        base.mkdir(parents=True, exist_ok=True)
        gw_port, prom_port = free_port(), free_port()
        self.pushgateway, self.prometheus = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prom_port}"
        self.servers = [Background(pushgateway_argv(gw_port), base / "pushgateway.log")]
        config = base / "prometheus.yml"
        config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: pushgateway\n"
                          f"    honor_labels: true\n    static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]\n")
        self.servers.append(Background(prometheus_argv(config, base / "prom-data", prom_port), base / "prometheus.log"))
        self.servers[0].wait_http(f"{self.pushgateway}/-/ready")
        self.servers[1].wait_http(f"{self.prometheus}/-/ready")

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


class TokenService:
    """A small Docker/OCI token service on 127.0.0.1, as Harbor or a cloud registry runs one: Distribution is
    configured with ``auth: token`` pointing at it; a client that gets 401 asks it for a JWT (HTTP Basic with its
    user and password, the scope it needs) and gets one granting ``grants[user]`` actions on any repository
    (RS256, the signing certificate in the token's x5c header and in the registry's rootcertbundle)."""

    SERVICE, ISSUER = "edgectl-test-registry", "edgectl-test-tokens"

    def __init__(self, base: Path, users: dict[str, str], grants: dict[str, set[str]]) -> None:
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        base.mkdir(parents=True, exist_ok=True)
        self.users, self.grants, self.issued = users, grants, []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgectl test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2)).sign(self.key, hashes.SHA256()))
        self.cert_pem = base / "token-signer.pem"
        self.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                status, body = service.answer(self.path, self.headers.get("Authorization", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def registry_config(self) -> str:
        return (f"auth:\n  token: {{realm: \"{self.realm}\", service: {self.SERVICE}, issuer: {self.ISSUER}, "
                f"rootcertbundle: {self.cert_pem}}}\n")

    def answer(self, path: str, authorization: str) -> tuple[int, dict]:
        import urllib.parse

        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        user = None
        if authorization.startswith("Basic "):
            name, _, password = base64.b64decode(authorization[6:]).decode().partition(":")
            if self.users.get(name) != password:
                return 401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad user or password"}]}
            user = name
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            allowed = self.grants.get(user or "", set())
            access.append({"type": kind, "name": repo,
                           "actions": sorted(a for a in actions.split(",") if a in allowed)})
        self.issued.append((user, access))
        return 200, {"token": self.jwt(user or "", access)}

    def jwt(self, subject: str, access: list[dict]) -> str:
        import secrets

        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "x5c": [base64.b64encode(self.cert_der).decode()]}
        claims = {"iss": self.ISSUER, "sub": subject, "aud": self.SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64(signature)}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
