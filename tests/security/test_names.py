"""Shell metacharacters in any name (issue 06, case 11): every manifest field that names something a device sees (a
device, deployment, model, profile, label, container, volume, image, engine) or that reaches a remote command (SSH
host, user, jump host, agent folder, python, venv) refuses each metacharacter, a leading '-', spaces and control
characters at validation, with the field path in the error. (Commands are argv lists quoted by one function
besides: tests/unit/test_ssh_transport.py runs them through a real shell.)
"""

from __future__ import annotations

import json

import pytest

from edgectl.errors import SpecErrors
from edgectl.load import load_text
from edgectl.spec import API_VERSION

HOSTILE = [";", "a;b", "$(id)", "`id`", "a|b", "a&b", "a>b", "a<b", "*", "a?", "'a'", '"a"', "a b", "a\tb", "a\nb",
           "a\\b", "-rf", "--help", "a$b", "${HOME}", "~root", "a#b", "(a)", "{a,b}", "a!b", "a\x00b", "a\u00a0b"]


def fleet(device: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": "Fleet", "metadata": {"name": "lab"}, "spec": {"devices": [device]}}


def ssh_device(**transport) -> dict:
    return {"name": "pi", "profile": "auto", "transport": {"type": "ssh", "host": "pi.local", **transport}}


def docker_device(**transport) -> dict:
    return {"name": "box", "profile": "auto", "transport": {"type": "docker", **transport}}


DEPLOYMENT = {"apiVersion": API_VERSION, "kind": "Deployment", "metadata": {"name": "chat"},
              "spec": {"model": "tiny", "selector": {"devices": ["pi"]}}}
MODEL = {"apiVersion": API_VERSION, "kind": "Model", "metadata": {"name": "tiny"},
         "spec": {"architecture": {"family": "llama", "parameters": 1000, "layers": 2, "hidden_size": 64,
                                   "attention_heads": 4, "kv_heads": 4, "head_dim": 16, "vocab_size": 100,
                                   "max_context": 512},
                  "sources": [{"type": "gguf", "precision": "F16", "path": "tiny.gguf"}]}}
PROFILE = {"apiVersion": API_VERSION, "kind": "DeviceProfile", "metadata": {"name": "rpi5"},
           "spec": {"arch": "aarch64", "cpu": {"model": "A76", "cores": 4}, "memory_gb": 8, "os_reserved_gb": 1,
                    "disk_gb": 32, "runtimes": ["llamacpp"], "default_threads": 4}}


def with_value(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for step in path[:-1]:
        target = target[step]
    if path[-1] == "<key>":
        target.clear()
        target[value] = "x"
    else:
        target[path[-1]] = value
    return doc


SSH_VALID = {"host": "pi.local", "user": "pi", "proxy_jump": "ops@bastion:2200", "agent_dir": "/opt/edgectl-agent",
             "python": "python3", "venv": "~/venvs/agent"}
DOCKER_VALID = {"container": "agent", "volume": "agent-store", "image": "edgectl-agent:0.1", "base_image": "debian:12",
                "engine": "unix:///run/docker.sock"}

# (document, path to the field, the field path the error names)
FIELDS = [
    (fleet(ssh_device()), ("metadata", "name"), "metadata.name"),
    (fleet(ssh_device()), ("spec", "devices", 0, "name"), "spec.devices[0].name"),
    (fleet(ssh_device()), ("spec", "devices", 0, "profile"), "spec.devices[0].profile"),
    (fleet({**ssh_device(), "labels": {"site": "lab"}}), ("spec", "devices", 0, "labels", "site"),
     "spec.devices[0].labels.site"),
    (fleet({**ssh_device(), "labels": {"site": "lab"}}), ("spec", "devices", 0, "labels", "<key>"),
     "spec.devices[0].labels"),
    *[(fleet(ssh_device(**{f: v})), ("spec", "devices", 0, "transport", f), f"spec.devices[0].transport.{f}")
      for f, v in SSH_VALID.items()],
    *[(fleet(docker_device(**{f: v})), ("spec", "devices", 0, "transport", f), f"spec.devices[0].transport.{f}")
      for f, v in DOCKER_VALID.items()],
    (DEPLOYMENT, ("metadata", "name"), "metadata.name"),
    (DEPLOYMENT, ("spec", "model"), "spec.model"),
    (DEPLOYMENT, ("spec", "selector", "devices", 0), "spec.selector.devices[0]"),
    (MODEL, ("metadata", "name"), "metadata.name"),
    (PROFILE, ("metadata", "name"), "metadata.name"),
]


def test_the_base_documents_are_valid():
    for doc, _, _ in FIELDS:
        load_text(json.dumps(doc), "ok.yaml")  # JSON is YAML


@pytest.mark.parametrize("doc, path, field", FIELDS, ids=[f[2] + ":" + f[0]["kind"] for f in FIELDS])
def test_every_name_refuses_shell_metacharacters(doc, path, field):
    refused = 0
    for bad in HOSTILE:
        text = json.dumps(with_value(doc, path, bad))
        with pytest.raises(SpecErrors) as e:
            load_text(text, "names.yaml")
        assert any(field in str(err) for err in e.value.errors), (bad, [str(x) for x in e.value.errors])
        refused += 1
    assert refused == len(HOSTILE)
