"""Pull mode's pure parts: the Fleet rules, enrol, the agent's --pull-config, the status report, the published
state's versioning (against an in-memory registry; tests/integration/test_pull_registry.py runs the real one)."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from edgectl_agent.api import ArtifactRef, DeploymentState, DesiredDeployment
from edgectl_agent.pull import jittered
from edgectl_agent.pull_report import report_text
from edgectl_agent.pull_state import PullStatus, PublishedState
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from edgectl.errors import PlanError
from edgectl.load import load_paths
from edgectl.signing import Signer, generate_key
from edgectl.spec.fleet import FleetSpec

PULL = {"registry": "127.0.0.1:5000", "repository": "shops/models", "plain_http": True}
DEVICE = {"name": "shop-1", "profile": "x86-cpu-server", "transport": {"type": "pull"}}


def test_pull_devices_need_a_registry_a_signing_key_and_a_named_profile():
    with pytest.raises(ValidationError, match="has no spec.pull"):
        FleetSpec.model_validate({"devices": [DEVICE], "signing": {"key_file": "k"}})
    with pytest.raises(ValidationError, match="must be signed"):
        FleetSpec.model_validate({"devices": [DEVICE], "pull": PULL})
    with pytest.raises(ValidationError, match="profile 'auto' cannot be planned"):
        FleetSpec.model_validate({"devices": [{**DEVICE, "profile": "auto"}], "pull": PULL,
                                  "signing": {"key_file": "k"}})
    ok = FleetSpec.model_validate({"devices": [DEVICE], "pull": PULL, "signing": {"key_file": "k"}})
    assert ok.pull.poll_interval_s == 300 and ok.devices[0].transport.type == "pull"
    with pytest.raises(ValidationError):
        FleetSpec.model_validate({"devices": [DEVICE], "pull": {**PULL, "registry": "evil host; rm"},
                                  "signing": {"key_file": "k"}})


FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: shops}}
spec:
  signing: {{key_file: fleet.key}}
  pull: {{registry: "127.0.0.1:5000", repository: shops/models, plain_http: true,
          pushgateway: "http://127.0.0.1:9091"}}
  devices:
    - {{name: shop-1, profile: x86-cpu-server, transport: {{type: pull}}}}
    - {{name: lab-1, profile: x86-cpu-server, transport: {{type: local}}{extra}}}
"""


@pytest.fixture
def manifests(tmp_path) -> Path:
    generate_key(tmp_path / "fleet.key")
    (tmp_path / "fleet.yaml").write_text(FLEET.format(extra=""))
    return tmp_path


def test_enroll_writes_the_pull_config_with_the_fleet_key_and_read_only_credentials(manifests, monkeypatch):
    from edgectl.pull.enroll import pull_config, write_config

    monkeypatch.setenv("EDGECTL_REGISTRY_READ_USERNAME", "shop")
    monkeypatch.setenv("EDGECTL_REGISTRY_READ_PASSWORD", "read-only")
    spec = load_paths([manifests])
    config = pull_config(spec, "shop-1")
    signer = Signer.load(manifests / "fleet.key")
    assert (config.registry, config.repository, config.scheme) == ("127.0.0.1:5000", "shops/models", "http")
    assert (config.username, config.password) == ("shop", "read-only")
    assert config.verify_key_pem.encode() == signer.public_pem
    assert config.report_url == "http://127.0.0.1:9091"
    out = manifests / "pull.json"
    write_config(config, out)
    assert out.stat().st_mode & 0o777 == 0o600 and json.loads(out.read_text())["device"] == "shop-1"


def test_enroll_refuses_push_devices_and_unknown_names(manifests):
    from edgectl.errors import NotFoundError
    from edgectl.pull.enroll import pull_config

    spec = load_paths([manifests])
    with pytest.raises(PlanError, match="not a pull device") as e:
        pull_config(spec, "lab-1")
    assert "type: pull" in e.value.hint
    with pytest.raises(NotFoundError, match="no device named 'nope'"):
        pull_config(spec, "nope")


def test_agent_pull_config_pins_the_fleet_key(manifests, tmp_path):
    from edgectl_agent.cli import UsageError, build_parser, pull_settings, settings_from_args

    from edgectl.pull.enroll import pull_config, write_config

    write_config(pull_config(load_paths([manifests]), "shop-1"), tmp_path / "pull.json")
    args = build_parser().parse_args(["serve", "--root", str(tmp_path / "root"), "--pull-config",
                                      str(tmp_path / "pull.json")])
    settings = pull_settings(settings_from_args(args))
    assert settings.verify_key_file == tmp_path / "root" / "pull-verify-key.pem"
    assert settings.verify_key_file.read_bytes() == Signer.load(manifests / "fleet.key").public_pem
    (tmp_path / "other.pub").write_text("not the key")
    args = build_parser().parse_args(["serve", "--root", str(tmp_path / "root"), "--pull-config",
                                      str(tmp_path / "pull.json"), "--verify-key-file", str(tmp_path / "other.pub")])
    with pytest.raises(UsageError, match="is not the fleet key"):
        pull_settings(settings_from_args(args))


def test_poll_jitter_stays_within_twenty_percent():
    rng = random.Random(1)
    delays = [jittered(100, rng) for _ in range(1000)]
    assert 80 <= min(delays) < 90 and 110 < max(delays) <= 120


def test_status_report_is_valid_prometheus_text():
    since = datetime(2026, 1, 1, tzinfo=timezone.utc)
    status = PullStatus(device="shop-1", outcome="applied", version=3, applied_version=3, poll_interval_s=60,
                        expires_at=since + timedelta(days=7))
    art = ArtifactRef(digest="sha256:" + "ab" * 32, format="gguf", quant="Q8_0", size_bytes=10, model='ti"ny')
    text = report_text(status, [DeploymentState(name="chat", state="serving", active=art, since=since)], now=1000.0)
    samples = {(s.name, s.labels.get("outcome")): s for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("edgectl_pull_last_seen_timestamp_seconds", None)].value == 1000.0
    assert samples[("edgectl_pull_outcome", "applied")].value == 1
    assert samples[("edgectl_pull_outcome", "stale")].value == 0
    served = samples[("edgectl_pull_deployment_since_timestamp_seconds", None)]
    assert served.labels["digest"] == art.digest and served.labels["model"] == 'ti"ny'


class MemoryRegistry:
    """The three calls publish_state makes, in memory (tags -> manifests, digests -> blobs)."""

    def __init__(self) -> None:
        import hashlib

        self.hashlib, self.tags, self.blobs = hashlib, {}, {}

    def push_blob_bytes(self, data: bytes):
        digest = "sha256:" + self.hashlib.sha256(data).hexdigest()
        self.blobs[digest] = data
        return digest, len(data)

    def push_manifest(self, manifest: dict, tag: str) -> str:
        self.tags[tag] = manifest
        return "sha256:x"

    def manifest(self, ref: str):
        return self.tags.get(ref)

    def blob(self, digest: str, limit: int) -> bytes:
        return self.blobs[digest]


def test_publish_state_increments_versions_and_is_idempotent(manifests):
    from edgectl.pull.publish import current_state, publish_state

    spec = load_paths([manifests])
    pull = spec.fleets["shops"].spec.pull
    signer = Signer.load(manifests / "fleet.key")
    reg = MemoryRegistry()
    d = signer.sign(DesiredDeployment(name="chat", runtime="llamacpp", artifact=ArtifactRef(
        digest="sha256:" + "cd" * 32, format="gguf", quant="Q8_0", size_bytes=10, model="tiny")))
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    first = publish_state(reg, signer, "shop-1", [d], pull, now=now)
    assert first.version == 1 and first.expires_at == now + timedelta(hours=pull.valid_for_h)
    assert publish_state(reg, signer, "shop-1", [d], pull, now=now + timedelta(hours=1)) is None  # unchanged
    renewed = publish_state(reg, signer, "shop-1", [d], pull, now=now + timedelta(hours=pull.valid_for_h * 0.6))
    assert renewed.version == 2  # past half its validity: renewed
    other = d.model_copy(update={"name": "chat2"})
    assert publish_state(reg, signer, "shop-1", [d, other], pull, now=now).version == 3
    assert isinstance(current_state(reg, "shop-1"), PublishedState)
    assert current_state(reg, "shop-1").version == 3


def test_status_from_reports_last_seen_and_stale(manifests):
    from edgectl.pull.status import device_status

    spec = load_paths([manifests])
    device = spec.devices["shop-1"]
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)

    def series(age_s: float, outcome: str = "unchanged") -> list[dict]:
        base = {"job": "edgectl_pull", "device": "shop-1"}
        return [{"metric": {**base, "__name__": "push_time_seconds"}, "value": [0, str(now.timestamp() - age_s)]},
                {"metric": {**base, "__name__": "edgectl_pull_poll_interval_seconds"}, "value": [0, "60"]},
                {"metric": {**base, "__name__": "edgectl_pull_applied_version"}, "value": [0, "4"]},
                {"metric": {**base, "__name__": "edgectl_pull_outcome", "outcome": outcome}, "value": [0, "1"]}]

    fresh = device_status(spec, device, series(30), now=now)
    assert fresh.reachable and fresh.error is None and fresh.endpoint == "pull, last seen 30 s ago, state v4"
    overdue = device_status(spec, device, series(151), now=now)  # > 2.5 intervals
    assert not overdue.reachable and overdue.error.startswith("stale: last seen 151 s ago")
    frozen = device_status(spec, device, series(10, "stale"), now=now)
    assert not frozen.reachable and "expired state" in frozen.error
    never = device_status(spec, device, None, now=now)
    assert not never.reachable and "never seen" in never.error


def test_a_command_that_connects_says_a_pull_device_is_never_dialled():
    from edgectl.errors import TransportError
    from edgectl.spec import Device
    from edgectl.transport import transport_for

    with pytest.raises(TransportError) as e:
        transport_for(Device(name="shop-1", profile="pi5-8gb", transport={"type": "pull"}))
    assert "device 'shop-1': it is a pull device: edgectl never connects to it" in e.value.message
    assert "--device" in e.value.hint
