"""A small read-only OCI Distribution client for the agent's pull mode, on the standard library only.

What the agent needs and no more: the digest of a tag (HEAD, for cheap change detection), a small manifest or blob
read whole with a size cap, and a blob streamed from an offset (``Range``) for resumable downloads. Auth: HTTP
Basic (Distribution with htpasswd) and the Bearer token flow of Docker Hub, Harbor, Zot and cloud registries.
Every manifest request sends the OCI ``Accept`` header (Distribution 2.8 answers 404 without it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
TIMEOUT_S = 30.0


class RegistryError(Exception):
    """The registry could not be reached, refused us, or answered something unusable. ``status``: HTTP status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class _NoRedirectAuth(urllib.request.HTTPRedirectHandler):
    """Follow redirects (blob storage behind a registry) but never carry our Authorization header elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


class RegistryReader:
    def __init__(self, registry: str, repository: str, *, scheme: str = "https", username: str | None = None,
                 password: str | None = None) -> None:
        self.base = f"{scheme}://{registry}/v2/{repository}"
        self.repository = repository
        self.username, self.password = username, password
        self._auth: str | None = None  # the Authorization header that worked last
        self.server_date: datetime | None = None  # the registry's clock (its Date header) at the last tag HEAD
        self._opener = urllib.request.build_opener(_NoRedirectAuth())

    # -- requests ---------------------------------------------------------------------------------------------
    def _open(self, method: str, path: str, headers: dict[str, str] | None = None):
        url = f"{self.base}/{path}"
        for attempt in range(2):
            req = urllib.request.Request(url, method=method, headers=dict(headers or {}))
            if self._auth:
                req.add_header("Authorization", self._auth)
            try:
                return self._opener.open(req, timeout=TIMEOUT_S)
            except urllib.error.HTTPError as e:
                if e.code == 401 and attempt == 0:
                    challenge = e.headers.get("WWW-Authenticate", "")
                    e.close()
                    self._auth = self._authorize(challenge)
                    continue
                e.close()
                raise RegistryError(f"{method} {url}: HTTP {e.code} {e.reason}", status=e.code) from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise RegistryError(f"{method} {url}: cannot reach the registry ({reason})") from None
        raise RegistryError(f"{method} {url}: the registry refused our credentials (HTTP 401)", status=401)

    def _authorize(self, challenge: str) -> str:
        scheme, _, params = challenge.partition(" ")
        basic = None
        if self.username is not None:
            basic = "Basic " + base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        if scheme.lower() == "basic":
            if basic is None:
                raise RegistryError("the registry needs credentials and the pull config has none", status=401)
            return basic
        if scheme.lower() != "bearer":
            raise RegistryError(f"unsupported registry auth challenge {challenge[:80]!r}", status=401)
        fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
        if "realm" not in fields:
            raise RegistryError("the registry's Bearer challenge names no realm", status=401)
        query = {k: fields[k] for k in ("service", "scope") if k in fields}
        query.setdefault("scope", f"repository:{self.repository}:pull")
        req = urllib.request.Request(fields["realm"] + "?" + urllib.parse.urlencode(query))
        if basic:
            req.add_header("Authorization", basic)
        try:
            with self._opener.open(req, timeout=TIMEOUT_S) as r:
                body = json.loads(r.read(64 * 1024))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise RegistryError(f"cannot get a registry token from {fields['realm']}: {e}", status=401) from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"the token service {fields['realm']} returned no token", status=401)
        return f"Bearer {token}"

    def clock_skew_s(self, now: datetime) -> float | None:
        """``now`` (this device's clock) minus the registry's at the last tag HEAD; None when it sent no Date.
        Only reported: expiry stays judged by the device's clock (a registry could lie about the time)."""
        return None if self.server_date is None else (now - self.server_date).total_seconds()

    # -- reads ------------------------------------------------------------------------------------------------
    def tag_digest(self, tag: str) -> str:
        """The manifest digest ``tag`` points at now (a HEAD: no body). RegistryError 404 when there is none."""
        with self._open("HEAD", f"manifests/{tag}", {"Accept": OCI_MANIFEST}) as r:
            digest = r.headers.get("Docker-Content-Digest")
            self.server_date = _http_date(r.headers.get("Date"))
        if not digest:
            raise RegistryError(f"the registry gave no Docker-Content-Digest for tag {tag}")
        return digest

    def manifest(self, reference: str, *, limit: int) -> tuple[dict, str]:
        """The OCI manifest at ``reference`` (tag or digest) and its digest, verified when ``reference`` is one."""
        with self._open("GET", f"manifests/{reference}", {"Accept": OCI_MANIFEST}) as r:
            data = self._read_capped(r, limit, f"manifest {reference}")
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise RegistryError(f"manifest {reference} hashes to {digest}: refused")
        try:
            return json.loads(data), digest
        except ValueError:
            raise RegistryError(f"manifest {reference} is not JSON") from None

    def blob_size(self, digest: str) -> int:
        """The size of blob ``digest`` (a HEAD)."""
        with self._open("HEAD", f"blobs/{digest}") as r:
            length = r.headers.get("Content-Length", "")
        if not length.isdigit():
            raise RegistryError(f"the registry gave no size for blob {digest}")
        return int(length)

    def blob(self, digest: str, *, limit: int) -> bytes:
        """A small blob read whole, at most ``limit`` bytes, verified against ``digest``."""
        with self._open("GET", f"blobs/{digest}") as r:
            data = self._read_capped(r, limit, f"blob {digest}")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise RegistryError(f"blob {digest} hashes to {actual}: refused (corrupt or swapped by the registry)")
        return data

    def blob_stream(self, digest: str, offset: int, chunk: int = 1 << 20) -> tuple[int, Iterator[bytes]]:
        """Stream blob ``digest`` from byte ``offset``: returns where the bytes start (``offset`` when the registry
        honoured the Range, 0 when it sent the whole body, as a cold proxy does) and the chunks."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        r = self._open("GET", f"blobs/{digest}", headers)
        start = offset if r.status == 206 else 0

        def chunks() -> Iterator[bytes]:
            with r:
                while data := r.read(chunk):
                    yield data
        return start, chunks()

    @staticmethod
    def _read_capped(r, limit: int, what: str) -> bytes:
        length = r.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise RegistryError(f"{what} is {length} bytes, more than the {limit} allowed: refused before reading")
        data = r.read(limit + 1)
        if len(data) > limit:
            raise RegistryError(f"{what} is more than the {limit} bytes allowed: refused")
        return data


def _http_date(value: str | None) -> datetime | None:
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError):
        return None
