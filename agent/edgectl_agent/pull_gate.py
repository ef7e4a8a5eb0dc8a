"""Pull mode's health gate: once a state is applied, the agent sends itself the smoke request the state names.

The request goes through the agent's own serving API on loopback, exactly as a client's (and as edgectl's smoke
request to a push device): a streamed chat completion asking for the agent's timings, or the KServe readiness
endpoint for a tensor model; then the model's other golden prompts (``SmokeRequest.more``), each a plain chat
completion. The result (timings, the answers' first characters, or the error) is kept in the pull status and reported
outward; edgectl judges it with the one gate rule (edgectl.apply.rollout.gate_problems) while it
rolls waves out, and rolls a failing device back by publishing its previous state.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from edgectl_agent.api import TIMINGS_HEADER
from edgectl_agent.pull_state import GateReport, GoldenAsk, SmokeRequest

TIMEOUT_S = 120.0
ANSWER_CHARS = 1000  # room for a JSON answer that expect_json_schema checks


def loopback_base(host: str, port: int) -> str:
    """The agent's own base URL from this machine (a wildcard listen address is reached on loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def smoke_request(base: str, token: str, name: str, smoke: SmokeRequest, *, digest: str, version: int) -> GateReport:
    """Send ``smoke`` to deployment ``name`` at ``base`` (blocking; run it in a thread)."""
    headers = {"Authorization": f"Bearer {token}"}
    try:
        if smoke.kind != "llm":
            req = urllib.request.Request(f"{base}/v2/models/{name}/ready", headers=headers)
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
                r.read()
            return GateReport(digest=digest, version=version)
        body = {"model": name, "stream": True, "max_tokens": smoke.max_tokens, "temperature": 0,
                "messages": [{"role": "user", "content": smoke.prompt}]}
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                     headers={**headers, "Content-Type": "application/json", TIMINGS_HEADER: "1"})
        pieces: list[str] = []
        timings: dict = {}
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            for raw in r:
                line = raw.decode("utf-8", "replace").strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                timings = chunk.get("timings") or timings
                content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if content:
                    pieces.append(content)
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace")
        e.close()
        return GateReport(digest=digest, version=version, error=f"smoke request: HTTP {e.code} {detail}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        return GateReport(digest=digest, version=version,
                          error=f"smoke request failed: {getattr(e, 'reason', e)}")
    answer = "".join(pieces)
    report = GateReport(digest=digest, version=version, ttft_s=timings.get("ttft_s"), tokens=timings.get("tokens"),
                        decode_s=timings.get("decode_s"), answer=answer[:ANSWER_CHARS],
                        error=None if answer else "the smoke request produced no text")
    if report.error or not smoke.more:
        return report
    answers = []
    for ask in smoke.more:
        text, error = _answer(base, headers, name, ask)
        if error:
            return report.model_copy(update={"answers": answers, "error": f"golden prompt {ask.prompt!r}: {error}"})
        answers.append(text[:ANSWER_CHARS])
    return report.model_copy(update={"answers": answers})


def _answer(base: str, headers: dict, name: str, ask: GoldenAsk) -> tuple[str, str | None]:
    """One golden prompt as a plain chat completion at temperature 0: (its answer, None) or ("", why it failed)."""
    body = {"model": name, "max_tokens": ask.max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": ask.prompt}]}
    req = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                                 headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            out = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode("utf-8", "replace")
        e.close()
        return "", f"HTTP {e.code} {detail}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return "", f"request failed: {getattr(e, 'reason', e)}"
    return ((out.get("choices") or [{}])[0].get("message") or {}).get("content") or "", None
