"""A small OCI Distribution client for publishing (httpx): blobs streamed from disk, manifests, tags.

Written rather than taken from oras-py: its plain upload reads the whole file into memory and its downloads check
no digest. Here a blob is hashed while it streams (the registry also checks the ``digest`` it is given), an
existing blob is never sent again (HEAD first), every manifest request carries the OCI ``Accept`` header
(Distribution 2.8 answers 404 without it), and auth is HTTP Basic or the Bearer token flow (Harbor, Zot, cloud
registries) with push scope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from edgectl.errors import EdgectlError

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 1 << 20
# The speed a mirror is guessed to copy a blob from its origin at, for the first probe of a warm (warm_blob): a
# probe that comes too early costs the origin one more aborted stream, one that comes too late only waits.
WARM_GUESS_BYTES_S = 100 * 2**20


class RegistryError(EdgectlError):
    """The registry could not be reached or refused a request."""

    exit_code = 1


class _RegistryAuth(httpx.Auth):
    """Basic, or Bearer from the token service named in the 401 challenge (with the same user and password)."""

    def __init__(self, username: str | None, password: str | None, repository: str) -> None:
        self.basic = ("Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()
                      if username else None)
        self.repository = repository
        self.header: str | None = None

    def auth_flow(self, request: httpx.Request):
        if self.header:
            request.headers["Authorization"] = self.header
        response = yield request
        if response.status_code != 401:
            return
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params = challenge.partition(" ")
        if scheme.lower() == "basic" and self.basic is not None:
            self.header = self.basic
        elif scheme.lower() == "bearer":
            fields = dict(re.findall(r'(\w+)="([^"]*)"', params))
            query = {k: fields[k] for k in ("service", "scope") if k in fields}
            query.setdefault("scope", f"repository:{self.repository}:pull,push")
            token_request = httpx.Request("GET", fields.get("realm", ""), params=query)
            if self.basic is not None:
                token_request.headers["Authorization"] = self.basic
            token_response = yield token_request
            token_response.read()
            body = token_response.json() if token_response.status_code == 200 else {}
            token = body.get("token") or body.get("access_token")
            if not token:
                return
            self.header = f"Bearer {token}"
        else:
            return
        request.headers["Authorization"] = self.header
        yield request


class RegistryWriter:
    def __init__(self, registry: str, repository: str, *, plain_http: bool = False, username: str | None = None,
                 password: str | None = None, timeout: float = 60.0) -> None:
        scheme = "http" if plain_http else "https"
        self.where = f"{registry}/{repository}"
        self.base = f"{scheme}://{registry}/v2/{repository}"
        self.client = httpx.Client(auth=_RegistryAuth(username, password, repository), timeout=timeout,
                                   follow_redirects=True)

    def close(self) -> None:
        self.client.close()

    def _request(self, method: str, url: str, ok: tuple[int, ...], **kwargs) -> httpx.Response:
        try:
            r = self.client.request(method, url, **kwargs)
        except httpx.HTTPError as e:
            raise RegistryError(f"{method} {url}: cannot reach the registry ({e})",
                                hint="check spec.pull.registry and that the registry runs; spec.pull.plain_http "
                                     "must match how it listens") from e
        if r.status_code not in ok:
            fix = ("check the user and password in the environment variables spec.pull.credentials_env names"
                   if r.status_code in (401, 403) else "see the registry's log")
            raise RegistryError(f"{method} {url}: HTTP {r.status_code} {r.text[:200]}", hint=fix)
        return r

    # -- blobs ------------------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        return self._request("HEAD", f"{self.base}/blobs/{digest}", (200, 404)).status_code == 200

    def push_blob_bytes(self, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has_blob(digest):
            self._upload(digest, data, len(data))
        return digest, len(data)

    def push_blob_file(self, path: Path, digest: str) -> int:
        """Upload ``path`` as blob ``digest`` (streamed; skipped when the registry has it). Returns its size."""
        size = path.stat().st_size
        if self.has_blob(digest):
            return size
        hasher = hashlib.sha256()

        def stream() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    yield chunk
        self._upload(digest, stream(), size)
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:  # the registry refused it too (digest parameter); say which side is wrong
            raise RegistryError(f"{path} hashes to {actual}, not {digest}",
                                hint="the local artifact store is corrupt: remove it and run `edgectl build`")
        return size

    def _upload(self, digest: str, content, size: int) -> None:
        start = self._request("POST", f"{self.base}/blobs/uploads/", (202,))
        location = start.headers.get("Location", "")
        url = httpx.URL(self.base).join(location)
        url = url.copy_merge_params({"digest": digest})
        self._request("PUT", str(url), (201,), content=content,
                      headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})

    # -- tags -------------------------------------------------------------------------------------------------
    def tags(self, *, page: int = 1000, limit: int = 200_000) -> list[str]:
        """Every tag of the repository, through the tags/list API page by page (``n``, then the ``Link: <...>;
        rel="next"`` the registry sends while there are more). More than ``limit`` is refused."""
        out: list[str] = []
        url: str | None = f"{self.base}/tags/list?n={page}"
        while url is not None:
            r = self._request("GET", url, (200, 404))
            if r.status_code == 404:  # no repository yet: nothing pushed to it
                return out
            try:
                out += [t for t in (r.json().get("tags") or []) if isinstance(t, str)]
            except ValueError as e:
                raise RegistryError(f"GET {url}: the tag list is not JSON", hint="see the registry's log") from e
            if len(out) > limit:
                raise RegistryError(f"{self.where} has more than {limit} tags: refused",
                                    hint="keep the enrolment records in a repository of their own")
            nxt = re.search(r'<([^>]+)>\s*;\s*rel="?next"?', r.headers.get("Link", ""))
            url = str(httpx.URL(self.base).join(nxt.group(1))) if nxt else None
        return out

    # -- manifests --------------------------------------------------------------------------------------------
    def push_manifest(self, manifest: dict, tag: str) -> str:
        data = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
        r = self._request("PUT", f"{self.base}/manifests/{tag}", (201,), content=data,
                          headers={"Content-Type": OCI_MANIFEST})
        return r.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(data).hexdigest()

    def manifest(self, reference: str) -> dict | None:
        """The OCI manifest at ``reference``, or None when there is none."""
        r = self._request("GET", f"{self.base}/manifests/{reference}", (200, 404), headers={"Accept": OCI_MANIFEST})
        return r.json() if r.status_code == 200 else None

    def warm_blob(self, digest: str, *, settle_s: float = 600.0) -> int:
        """Make a pull-through mirror hold blob ``digest``; returns its size when the mirror had to fetch it from
        its origin now (0: it held it already).

        A ``Range: bytes=0-0`` GET: a mirror that holds the blob answers 206 with one byte. A cold Distribution 2.8
        answers 200 with the whole body, streamed from one upstream copy, while a second upstream copy (its
        ``storeLocal``, a goroutine that outlives the request) fills its storage. The first answer is closed right
        after its headers: the mirror stops that upstream copy at its next failed write, so of it only what the
        sockets between origin and mirror buffer leaves the origin (a blob smaller than that is sent whole, twice).
        Then wait until the mirror serves it from its storage (206), probing the same way: a probe that finds the
        blob still in flight costs one more aborted stream (measured: up to ~10 MB on loopback), so the first waits
        for the copy at WARM_GUESS_BYTES_S and the next ones double the wait. Last, read it once from the mirror's
        storage to check its digest, which costs the origin nothing."""
        url = f"{self.base}/blobs/{digest}"
        deadline, pause, fetched = time.monotonic() + settle_s, 0.0, 0
        try:
            while True:
                with self.client.stream("GET", url, headers={"Range": "bytes=0-0"}) as r:
                    if r.status_code == 206:
                        break
                    if r.status_code != 200:
                        r.read()
                        raise RegistryError(f"GET {url}: HTTP {r.status_code} {r.text[:200]}",
                                            hint="check that the mirror proxies spec.pull.registry and that the "
                                                 "publish credentials may read it; see the mirror's log")
                    size = int(r.headers.get("Content-Length") or 0)
                # closed unread: the mirror's own stored copy is the one that matters
                if not fetched:
                    fetched = size or 1
                    pause = 1.0 + fetched / WARM_GUESS_BYTES_S
                elif time.monotonic() > deadline:
                    raise RegistryError(f"the mirror {self.where} served blob {digest} but did not keep it within "
                                        f"{settle_s:.0f} s", hint="check the mirror's storage and log (is it in "
                                                                  "proxy mode, with space left?)")
                else:
                    pause = min(max(5.0, pause), pause * 2)
                time.sleep(pause)
            if fetched:
                self._check_mirror_copy(url, digest)
            return fetched
        except httpx.HTTPError as e:
            raise RegistryError(f"GET {url}: cannot reach the mirror ({e})",
                                hint="check spec.pull.mirrors[].registry and plain_http; set `warm: false` on a "
                                     "mirror edgectl cannot reach") from e

    def _check_mirror_copy(self, url: str, digest: str) -> None:
        """Read the blob the mirror now serves from its storage and check its digest."""
        hasher = hashlib.sha256()
        with self.client.stream("GET", url) as r:
            if r.status_code != 200:
                r.read()
                raise RegistryError(f"GET {url}: HTTP {r.status_code} {r.text[:200]} after the mirror stored it",
                                    hint="see the mirror's log")
            for chunk in r.iter_bytes(CHUNK):
                hasher.update(chunk)
        if "sha256:" + hasher.hexdigest() != digest:
            raise RegistryError(f"the mirror {self.where} served blob {digest} with other bytes",
                                hint="the mirror's cache or the origin's storage is corrupt: delete the blob there "
                                     "and publish again")

    def blob(self, digest: str, limit: int) -> bytes:
        r = self._request("GET", f"{self.base}/blobs/{digest}", (200,))
        data = r.content
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"blob {digest} in {self.where} is too large or does not match its digest",
                                hint="see the registry's storage; delete the tag and publish again")
        return data
