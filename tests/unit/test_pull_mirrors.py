"""Site mirrors and the per-Fleet wave wait (spec.pull): which mirror a device polls, warming a mirror that cannot
be reached (a real closed port on 127.0.0.1: reported, never raised), and the wave wait a Fleet sets. The warm
against a real Distribution proxy is tests/integration/test_pull_mirror_warm.py."""

from __future__ import annotations

import socket

import pytest
from pydantic import ValidationError

from edgectl.apply.report import Events
from edgectl.pull.mirrors import mirror_for, mirror_reader, warm_mirror
from edgectl.pull.rollout import TRANSFER_ALLOWANCE_S, wave_wait_s
from edgectl.spec.fleet import Device, PullRegistry


def device(name: str, **labels: str) -> Device:
    return Device.model_validate({"name": name, "profile": "pi5-8gb", "transport": {"type": "pull"},
                                  "labels": labels})


def pull(**extra) -> PullRegistry:
    return PullRegistry.model_validate({"registry": "origin.example:5000", "repository": "shops/models", **extra})


def test_a_device_polls_the_first_mirror_whose_labels_it_has():
    p = pull(mirrors=[{"registry": "mirror-a:5000", "labels": {"site": "a"}},
                      {"registry": "mirror-ab:5000", "labels": {"region": "eu"}}])
    assert mirror_for(p, device("x", site="a", region="eu")).registry == "mirror-a:5000"
    assert mirror_for(p, device("y", site="b", region="eu")).registry == "mirror-ab:5000"
    assert mirror_for(p, device("z", site="b")) is None


def test_a_mirror_names_the_devices_behind_it():
    with pytest.raises(ValidationError, match="labels"):
        pull(mirrors=[{"registry": "mirror-a:5000", "labels": {}}])


def test_the_wave_wait_is_the_fleets_when_it_sets_one():
    assert wave_wait_s(pull(poll_interval_s=60)) == 3 * 60 + TRANSFER_ALLOWANCE_S
    assert wave_wait_s(pull(poll_interval_s=60, wave_wait_s=900)) == 900
    with pytest.raises(ValidationError, match="wave_wait_s"):
        pull(wave_wait_s=1)


def test_a_mirror_that_cannot_be_reached_is_reported_not_raised():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = pull(mirrors=[{"registry": f"127.0.0.1:{port}", "plain_http": True, "labels": {"site": "a"}}])
    said = []

    class Recorded(Events):
        def info(self, device, message):
            said.append(message)
    client = mirror_reader(p, p.mirrors[0])
    try:
        result = warm_mirror(client, ["sha256:" + "0" * 64], Recorded())
    finally:
        client.close()
    assert result.error and "cannot reach the mirror" in result.error and "warm: false" in result.error
    assert result.blobs == 0 and said and said[0].startswith(f"warning: could not warm site mirror 127.0.0.1:{port}")


# -- `edgectl diff` for a pull device: its reported digest against the local store's --------------------------------
def diff_rows(reported_digest: str | None, store_digest: str | None, *, quant: str = "Q8_0") -> list[dict]:
    from datetime import datetime, timezone
    from types import SimpleNamespace

    from edgectl_agent.api import ArtifactRef, DeploymentState

    from edgectl.plan import recipe_id
    from edgectl.pull.diff import pull_rows
    from edgectl.spec import Recipe

    recipe = Recipe(model="tiny", format="gguf", kind="llm", quant=quant, source_precision="F32")
    dp = SimpleNamespace(device="shop-9", deployments=[SimpleNamespace(deployment="chat", chosen=SimpleNamespace(
        recipe=recipe), gate_digest=None)])
    serving = [] if reported_digest is None else [DeploymentState(
        name="chat", state="serving", since=datetime.now(timezone.utc),
        active=ArtifactRef(digest=reported_digest, format="gguf", quant="Q8_0", size_bytes=1, model="tiny"))]
    st = SimpleNamespace(deployments=serving, endpoint="pull, last seen 3 s ago, state v2", error=None, gates={})
    built = {recipe_id(recipe): SimpleNamespace(digest=store_digest)} if store_digest else {}
    return pull_rows(dp, st, built)


A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_diff_says_in_sync_only_when_the_reported_digest_is_the_stores():
    [row] = diff_rows(A, A)
    assert row["status"] == "in sync" and row["steps"] == [] and row["desired"] == "gguf Q8_0"
    assert (row["desired_digest"], row["observed_digest"]) == (A, A)


def test_diff_names_both_digests_when_the_same_quant_was_rebuilt():
    [row] = diff_rows(A, B)
    assert row["status"].startswith(f"drift: serves gguf Q8_0 {A[7:19]}, the local store's is {B[7:19]}"), row
    assert row["steps"] == ["publish"]


def test_diff_without_the_artifact_in_the_store_compares_format_and_quant_and_says_so():
    [row] = diff_rows(A, None)
    assert row["status"] == "in sync" and "not built here" in row["observed"]
    [other] = diff_rows(A, None, quant="Q4_0")
    assert other["status"].startswith("drift: serves another artifact")
    [never] = diff_rows(None, A)
    assert never["status"] == "not deployed"


# -- the tags/list API page by page (Distribution 2.8 sends one page: its real test is test_pull_inventory_registry) --
def test_tag_listing_follows_the_link_header_of_a_paging_registry():
    """A small HTTP server paging like the OCI distribution spec (``n``, ``last``, ``Link: <...>; rel="next"``)."""
    import http.server
    import json
    import threading
    import urllib.parse

    from edgectl.pull.oci import RegistryWriter

    tags = [f"device-d{i:02d}" for i in range(7)]
    asked = []

    class Paging(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            asked.append(q)
            n, last = int(q["n"]), q.get("last")
            rest = [t for t in tags if last is None or t > last]
            page = rest[:n]
            body = json.dumps({"name": "shops/models", "tags": page}).encode()
            self.send_response(200)
            if len(rest) > n:
                self.send_header("Link", f'</v2/shops/models/tags/list?n={n}&last={page[-1]}>; rel="next"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Paging)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = RegistryWriter(f"127.0.0.1:{server.server_address[1]}", "shops/models", plain_http=True)
    try:
        assert client.tags(page=3) == tags
        assert [q.get("last") for q in asked] == [None, "device-d02", "device-d05"]
    finally:
        client.close()
        server.shutdown()


def test_the_shipped_site_mirror_files_name_every_word_to_replace_in_their_envsubst_line():
    """deploy/site-mirror/'s files are templates a user renders with the `envsubst '${A} ${B}'` line in their own
    comments: that line must list exactly the ${...} words the file uses (a word left out would reach nginx or
    Distribution as is), and rendering them as tests/site_mirror.py does (what the integration tests run) leaves
    none behind."""
    import re

    from tests.site_mirror import DEPLOY, render

    files = sorted(DEPLOY.iterdir())
    assert {f.name for f in files} == {"distribution-proxy.yml", "nginx-origin-cache.conf"}
    for f in files:
        text = f.read_text()
        listed = re.search(r"envsubst '([^']*)'", text)
        assert listed, f"{f}: no envsubst line in its comments"
        named = set(re.findall(r"\$\{([A-Z_]+)\}", listed.group(1)))
        settings = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        used = set(re.findall(r"\$\{([A-Z_]+)\}", settings))
        assert used and named == used, f"{f}: envsubst names {sorted(named)}, the settings use {sorted(used)}"
        rendered = render(f, dict.fromkeys(used, "x")).splitlines()
        assert not [line for line in rendered if "${" in line and not line.lstrip().startswith("#")], f
