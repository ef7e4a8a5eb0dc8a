"""Signatures and the health gate digest: a deployment signed before DesiredDeployment.health_gate_digest existed
(its signed bytes have no such key) still verifies on today's agent, and a signed digest cannot be changed or
dropped without the signature failing (the gate a device must pass is part of what edgectl signs)."""

from __future__ import annotations

import base64

import pytest

from edgectl.signing import Signer, generate_key
from edgectl_agent.api import ArtifactRef, DeploymentSignature, DesiredDeployment
from edgectl_agent.signing import Verifier, canonical_bytes

GATE = "sha256:" + "c" * 64


@pytest.fixture
def fleet_key(tmp_path) -> Signer:
    generate_key(tmp_path / "fleet")
    return Signer.load(tmp_path / "fleet")


def deployment(**kw) -> DesiredDeployment:
    return DesiredDeployment(name="chat", artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf",
                                                               quant="Q4_0", size_bytes=10, model="m"), **kw)


def test_a_deployment_signed_before_the_gate_digest_existed_still_verifies(fleet_key, tmp_path):
    # the exact bytes an edgectl without health_gate_digest signed (no such key in the JSON)
    old_bytes = (b'edgectl-deployment-v1\n{"artifact":{"digest":"sha256:' + b"a" * 64 + b'","format":"gguf",'
                 b'"layout":"file","model":"m","quant":"Q4_0","size_bytes":10},"context_length":2048,"name":"chat",'
                 b'"parallel":1,"runtime":"llamacpp","runtime_options":{},"threads":null}')
    value = base64.b64encode(fleet_key.key.sign(old_bytes)).decode()
    old = deployment(signature=DeploymentSignature(key_id=fleet_key.key_id, value=value))
    assert old.health_gate_digest is None and canonical_bytes(old) == old_bytes
    Verifier(tmp_path / "fleet.pub").check(old)  # raises Forbidden when it does not verify
    assert fleet_key.verifies(old)


def test_the_signed_gate_digest_cannot_be_changed_or_dropped(fleet_key, tmp_path):
    signed = fleet_key.sign(deployment(health_gate_digest=GATE))
    verifier = Verifier(tmp_path / "fleet.pub")
    verifier.check(signed)
    assert b'"health_gate_digest":"' + GATE.encode() + b'"' in canonical_bytes(signed)
    for tampered in (signed.model_copy(update={"health_gate_digest": "sha256:" + "d" * 64}),
                     signed.model_copy(update={"health_gate_digest": None})):
        assert not fleet_key.verifies(tampered)
        with pytest.raises(Exception, match="changed after it was signed"):
            verifier.check(tampered)
