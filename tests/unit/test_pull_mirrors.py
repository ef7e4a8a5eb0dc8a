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
