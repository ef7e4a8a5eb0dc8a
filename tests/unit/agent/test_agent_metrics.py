"""The agent's /metrics: every metric the fleet collector, alerts and dashboard rely on, with bounded labels."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from edgectl_agent.api import CONTROL_PREFIX


def scrape(agent) -> dict[str, list]:
    """Sample name -> samples, from the agent's real /metrics text."""
    r = agent.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def value(samples: dict[str, list], name: str, **labels) -> float:
    matching = [s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, f"{name}{labels}: {matching} in {sorted(samples)}"
    return matching[0]


def test_lifecycle_metrics_swaps_rollbacks_state_and_backend(agent):
    for data in (agent.A, agent.B):
        agent.upload(data)
    before = time.time()
    agent.activate("chat", agent.A)
    agent.activate("chat", agent.B)
    s = scrape(agent)
    assert value(s, "edgectl_agent_swaps_total", deployment="chat") == 1
    assert value(s, "edgectl_agent_rollbacks_total", deployment="chat") == 0  # a swap forward is not a rollback
    assert value(s, "edgectl_agent_failed_activations_total", deployment="chat") == 0  # at 0, so increase() sees 1
    agent.activate("chat", agent.A)  # A is B's previous: the control plane rolls back
    s = scrape(agent)
    assert value(s, "edgectl_agent_swaps_total", deployment="chat") == 2
    assert value(s, "edgectl_agent_rollbacks_total", deployment="chat") == 1
    assert value(s, "edgectl_agent_last_successful_deploy_timestamp_seconds", deployment="chat") >= before
    assert value(s, "edgectl_agent_backend_up", deployment="chat", runtime="fake") == 1
    assert value(s, "edgectl_agent_deployment_state", deployment="chat", state="serving") == 1
    assert value(s, "edgectl_agent_deployment_state", deployment="chat", state="failed") == 0
    assert value(s, "edgectl_agent_model_load_seconds", deployment="chat") >= 0
    assert value(s, "edgectl_agent_active_artifact_info", deployment="chat",
                 digest=agent.digest_of(agent.A)) == 1

    agent.upload(agent.JUNK)
    assert agent.activate("chat", agent.JUNK).status_code == 422
    s = scrape(agent)
    assert value(s, "edgectl_agent_failed_activations_total", deployment="chat") == 1
    assert value(s, "edgectl_agent_deployment_state", deployment="chat", state="failed") == 1
    assert value(s, "edgectl_agent_backend_up", deployment="chat", runtime="fake") == 1  # A still answers

    agent.client.delete(f"{CONTROL_PREFIX}/deployments/chat", headers=agent.auth)
    s = scrape(agent)
    assert not [x for x in s.get("edgectl_agent_deployment_state", []) if x.labels["deployment"] == "chat"]
    assert "edgectl_agent_backend_up" not in s and "edgectl_agent_active_artifact_info" not in s


def test_tokens_decode_speed_and_latency(agent):
    agent.upload(agent.A)
    agent.activate("chat", agent.A)
    assert agent.chat("chat", max_tokens=4).status_code == 200
    r = agent.client.post("/v1/chat/completions", json={"model": "chat", "stream": True, "max_tokens": 5,
                                                        "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200
    s = scrape(agent)
    assert value(s, "edgectl_agent_completion_tokens_total", deployment="chat") == 9
    assert value(s, "edgectl_agent_prompt_tokens_total", deployment="chat") > 0
    assert value(s, "edgectl_agent_decode_seconds_total", deployment="chat") > 0
    assert value(s, "edgectl_agent_decode_tokens_per_second", deployment="chat") > 0
    assert value(s, "edgectl_agent_time_to_first_token_seconds_count", deployment="chat") == 1
    assert value(s, "edgectl_agent_request_duration_seconds_count", endpoint="/v1/chat/completions") == 2
    assert value(s, "edgectl_agent_requests_total", endpoint="/v1/chat/completions", status="200") == 2
    # Control and health endpoints are counted, not timed (they would only add series).
    assert value(s, "edgectl_agent_requests_total", endpoint=f"{CONTROL_PREFIX}/deployments/{{name}}",
                 status="200") == 1
    assert not [x for x in s["edgectl_agent_request_duration_seconds_count"] if x.labels["endpoint"] == "/metrics"]


def test_process_disk_and_build_info(agent):
    s = scrape(agent)
    assert value(s, "process_resident_memory_bytes") > 10 * 2**20
    assert value(s, "process_cpu_seconds_total") > 0
    assert 0 < value(s, "process_start_time_seconds") <= time.time()
    free, total = value(s, "edgectl_agent_store_disk_free_bytes"), value(s, "edgectl_agent_store_disk_total_bytes")
    assert 0 < free <= total
    assert len(s["edgectl_agent_build_info"]) == 1
    assert not [name for name in s if name.endswith("_created")]


def test_series_stay_bounded_over_every_route_and_status(agent):
    """Hit every route with good and bad requests and several deployments: well under 500 series per device."""
    datas = (agent.A, agent.B, agent.C)
    for i, data in enumerate(datas):
        agent.upload(data)
        agent.activate(f"dep-{i}", data)
    for name in ("dep-0", "dep-1", "dep-2", "nope"):
        agent.chat(name, max_tokens=3)
        agent.client.post("/v1/chat/completions", json={"model": name, "stream": True, "max_tokens": 3,
                                                        "messages": [{"role": "user", "content": "x"}]})
        agent.client.post("/v1/completions", json={"model": name, "prompt": "x", "max_tokens": 2})
        agent.client.post("/v1/embeddings", json={"model": name, "input": "x"})
        agent.client.post(f"/v2/models/{name}/infer", json={"inputs": []})
        agent.client.get(f"/v2/models/{name}")
        agent.client.get(f"/v2/models/{name}/ready")
    for path in ("/v1/models", "/v2", "/v2/health/live", "/v2/health/ready", "/healthz", "/readyz",
                 "/no/such/path", f"{CONTROL_PREFIX}/facts", f"{CONTROL_PREFIX}/state"):
        agent.client.get(path)
        agent.client.get(path, headers={"Authorization": "Bearer wrong"})
    agent.client.post("/v1/chat/completions", content=b"{not json")
    agent.upload(agent.JUNK)
    agent.activate("dep-0", agent.JUNK)
    series = sum(len(v) for v in scrape(agent).values())
    print(f"series: {series}")
    assert series < 500, series
    # With the request-derived names above, no label value came from a request.
    text = agent.client.get("/metrics").text
    assert "nope" not in text and "/no/such/path" not in text
