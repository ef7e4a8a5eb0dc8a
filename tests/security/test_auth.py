"""Auth and exposure (issue 06, case 9), in-process: every route of the agent app, enumerated from ``app.routes``.

The rule (docs/security.md): ``/healthz`` (liveness) is the only open endpoint. Control endpoints (``/control/v1``)
always need the device token. Serving endpoints (OpenAI, KServe, ``/metrics``, ``/readyz``, ``/openapi.json``) need
it whenever the agent listens beyond loopback; on loopback they are open to this machine (and to edgectl's tunnels),
and the Host guard (test_dns_rebinding.py) keeps web pages of other sites out.
"""

from __future__ import annotations

import re

import pytest
from starlette.routing import Route

import edgectl_agent.auth as auth_mod
from edgectl_agent.api import CONTROL_PREFIX


def endpoints(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app answers, included routers flattened (recent FastAPI keeps them as
    one entry of ``app.routes`` each). A route of another kind (a Mount, a websocket) would escape these tests,
    so it fails here instead."""
    out = []

    def walk(routes, prefix: str) -> None:
        for route in routes:
            if hasattr(route, "original_router"):  # fastapi.routing._IncludedRouter
                walk(route.original_router.routes, prefix + route.include_context.prefix)
                continue
            # OllamaRoute: an APIRoute that only reshapes the errors of the Ollama API (/api); auth is unchanged.
            assert type(route).__name__ in ("APIRoute", "Route", "OllamaRoute") and isinstance(route, Route), (
                f"route {route!r} is not a plain HTTP route: extend tests/security/test_auth.py to cover it")
            out.extend((method, prefix + route.path) for method in sorted(route.methods))

    walk(app.routes, "")
    return out


def concrete(path: str) -> str:
    """A request path for a template: every {parameter} becomes 'x' (auth is decided before parameters are)."""
    return re.sub(r"\{[^}]+\}", "x", path) or "/"


def kind(path: str) -> str:
    if path == "/healthz":
        return "liveness"
    return "control" if path.startswith(CONTROL_PREFIX + "/") else "serving"


def bad_headers(token: str) -> dict[str, dict[str, str]]:
    other = token[:-1] + ("A" if token[-1] != "A" else "B")
    return {"missing": {}, "empty bearer": {"Authorization": "Bearer "},
            "wrong, same length": {"Authorization": f"Bearer {other}"},
            "right token, other scheme": {"Authorization": f"Basic {token}"},
            "right token plus a suffix": {"Authorization": f"Bearer {token}x"},
            "right token's prefix": {"Authorization": f"Bearer {token[:-1]}"}}


def call(agent, method: str, path: str, headers: dict[str, str]):
    # Bodies that do not parse: authentication must be decided before the body is read or validated.
    body = b'{"not json' if method in ("POST", "PUT", "PATCH") else None
    return agent.client.request(method, concrete(path), headers=headers, content=body)


def assert_refused(r, method: str, path: str, why: str) -> None:
    assert r.status_code == 401, f"{method} {path} ({why}): {r.status_code} {r.text[:300]}"
    assert r.headers.get("www-authenticate") == "Bearer", (method, path, why)
    if method != "HEAD":
        error = r.json()["error"]
        assert error["type"] == "authentication_error" and "token" in error["hint"], (method, path, error)


def test_every_route_is_liveness_control_or_serving(agent):
    routes = endpoints(agent.app)
    kinds = {k: [(m, p) for m, p in routes if kind(p) == k] for k in ("liveness", "control", "serving")}
    assert [p for _, p in kinds["liveness"]] == ["/healthz"]
    assert {p for _, p in kinds["control"]} == {f"{CONTROL_PREFIX}/{p}" for p in (
        "facts", "state", "artifacts/{digest}", "deployments/{name}")}
    assert len(routes) >= 20, routes  # the OpenAI, KServe, metrics, readiness and control routes are all there
    print(f"\n{len(routes)} routes: {len(kinds['control'])} control, {len(kinds['serving'])} serving, 1 liveness")


def test_beyond_loopback_every_endpoint_but_liveness_refuses_missing_and_wrong_tokens(make_agent, tmp_path):
    remote = make_agent(tmp_path / "remote", host="0.0.0.0", allow_remote=True)
    checked = 0
    for method, path in endpoints(remote.app):
        if kind(path) == "liveness":
            continue
        for why, headers in bad_headers(remote.token).items():
            assert_refused(call(remote, method, path, headers), method, path, why)
            checked += 1
        r = call(remote, method, path, remote.auth)
        assert r.status_code != 401, f"{method} {path} refuses the right token: {r.text[:300]}"
    assert checked >= 19 * 6
    assert remote.client.get("/healthz").status_code == 200


def test_on_loopback_control_still_refuses_and_serving_is_open(agent):
    for method, path in endpoints(agent.app):
        if kind(path) == "control":
            for why, headers in bad_headers(agent.token).items():
                assert_refused(call(agent, method, path, headers), method, path, why)
            assert call(agent, method, path, agent.auth).status_code != 401, (method, path)
        else:  # by design: this machine (and edgectl's tunnels) only; see test_dns_rebinding.py for browsers
            assert call(agent, method, path, {}).status_code != 401, (method, path)


def test_the_openapi_document_follows_the_serving_rule(agent, make_agent, tmp_path):
    assert agent.client.get("/openapi.json").json()["info"]["title"] == "edgectl-agent"
    assert agent.client.get("/docs").status_code == 404 and agent.client.get("/redoc").status_code == 404
    remote = make_agent(tmp_path / "remote", host="0.0.0.0", allow_remote=True)
    assert remote.client.get("/openapi.json").status_code == 401
    assert remote.client.get("/openapi.json", headers=remote.auth).json()["paths"]


def test_the_token_is_compared_in_constant_time_only(agent, monkeypatch):
    """Every decision goes through hmac.compare_digest: with it answering False, even the right token is refused;
    with it answering True, any token passes. So no other (early-exit) comparison decides."""
    calls = []

    def spy(a, b):
        calls.append((a, b))
        return answer

    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    url = f"{CONTROL_PREFIX}/state"
    answer = False
    assert agent.client.get(url, headers=agent.auth).status_code == 401
    assert calls == [(agent.token.encode(), agent.token.encode())]
    answer = True
    assert agent.client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 200
    assert calls[-1] == (b"nope", agent.token.encode())
    assert agent.client.get(url).status_code == 401  # no header: refused before any comparison
    assert len(calls) == 2


@pytest.mark.parametrize("header", ["Bearer", "Bearer" + "\t" * 3, "bearer " + "x" * 4000, "Token abc", "\u00e9\u00e9"])
def test_odd_authorization_headers_are_401_not_errors(agent, header):
    r = agent.client.get(f"{CONTROL_PREFIX}/state", headers={"Authorization": header.encode("latin-1")})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
