"""The site mirror as shipped in deploy/site-mirror/, for real: nginx (Debian's nginx-light) caching the origin's
blobs with nginx-origin-cache.conf, and a Distribution in proxy mode whose upstream is that cache, configured with
distribution-proxy.yml. Both files are rendered here exactly as their comments tell a user to (the ${...} words
replaced), so what the docs ship is what the tests and bench/pull_scale.py run. ``scripts/setup.sh test`` installs
nginx; a missing one fails the test (never a silent skip)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx

from tests.integration.test_metrics_fleet import Background
from tests.registry import Registry, _free_port

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "site-mirror"
NGINX_CONF = DEPLOY / "nginx-origin-cache.conf"
DISTRIBUTION_CONF = DEPLOY / "distribution-proxy.yml"
NGINX_BIN = "/usr/sbin/nginx"

# What the Debian package's /etc/nginx/nginx.conf gives the conf.d file around it, for a private nginx in a temp
# folder (an access log that says which requests the cache answered; workers as the test's own user).
NGINX_MAIN = """\
daemon off;
worker_processes 1;
worker_rlimit_nofile 16384;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
{user}
events {{ worker_connections 8192; }}
http {{
    log_format cache '$remote_addr "$request" $status $body_bytes_sent cache=$upstream_cache_status rt=$request_time';
    access_log {dir}/access.log cache;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    include {dir}/edgectl-origin-cache.conf;
}}
"""


def render(template: Path, values: dict[str, str]) -> str:
    """``template`` with each ``${NAME}`` of ``values`` replaced (envsubst with a list of names, as documented)."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


class OriginCache:
    """nginx with deploy/site-mirror/nginx-origin-cache.conf in front of ``origin_url``; ``address`` host:port."""

    def __init__(self, base: Path, origin_url: str) -> None:
        if shutil.which(NGINX_BIN) is None:
            raise AssertionError(f"{NGINX_BIN} not installed: run `scripts/setup.sh test` (Debian package "
                                 "nginx-light)")
        base.mkdir(parents=True, exist_ok=True)
        for sub in ("cache", "tmp"):
            (base / sub).mkdir(exist_ok=True)
        self.base, self.port = base, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = base / "access.log"
        (base / "edgectl-origin-cache.conf").write_text(render(NGINX_CONF, {
            "ORIGIN_URL": origin_url, "CACHE_LISTEN": self.address, "CACHE_DIR": str(base / "cache")}))
        user = "user root;" if os.geteuid() == 0 else ""  # as root, workers would run as nobody: keep the owner
        (base / "nginx.conf").write_text(NGINX_MAIN.format(dir=base, user=user))
        self.server: Background | None = None

    def start(self) -> OriginCache:
        argv = [NGINX_BIN, "-p", str(self.base), "-e", str(self.base / "error.log"), "-c", str(self.base / "nginx.conf")]
        self.server = Background(argv, self.base / "nginx.out")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.server is not None and self.server.proc.poll() is None, self.errors()
            try:
                httpx.get(f"http://{self.address}/v2/", timeout=1.0)  # any answer: nginx is up (the origin may not)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"nginx did not answer on {self.address}:\n{self.errors()}")

    def errors(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.base / "nginx.out", self.base / "error.log")
                         if p.exists())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        self.server = None


def site_mirror_registry(base: Path, cache: OriginCache) -> Registry:
    """A Distribution (not started) configured with deploy/site-mirror/distribution-proxy.yml, upstream ``cache``."""
    registry = Registry(base, {})
    registry.config.write_text(render(DISTRIBUTION_CONF, {
        "MIRROR_LISTEN": registry.address, "MIRROR_STORAGE": str(base / "storage"), "CACHE_LISTEN": cache.address}))
    return registry
