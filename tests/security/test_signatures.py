"""Case 12, signatures: edgectl signs deployments with an ed25519 key; an agent given the public key refuses
anything unsigned, signed by another key or changed after signing, and an agent whose key file is missing refuses
everything rather than skipping verification.

Unit tests drive the real agent app in-process (fake runtime) and the real crypto; the last test runs `edgectl
apply` and a real agent process end to end on a tiny GGUF.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl_agent.api import CONTROL_PREFIX, ArtifactRef, DesiredDeployment
from edgectl_agent.facts import collect_facts
from edgectl_agent.signing import KEY_UNUSABLE, Verifier, canonical_bytes
from edgectl.apply import DeviceContext, Refused, check_signing_key
from edgectl.errors import SpecErrors
from edgectl.signing import SigningError, Signer, generate_key, rollback_deployment, signers_for
from edgectl.spec import Device
from edgectl.agents.install_local import agent_argv
from tests.unit.agent.conftest import AgentHarness

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def keys(tmp_path) -> dict[str, Signer]:
    """Two unrelated key pairs, made by edgectl keygen's code: 'fleet' (trusted by the agent) and 'other'."""
    (tmp_path / "keys").mkdir()
    out = {}
    for name in ("fleet", "other"):
        generate_key(tmp_path / "keys" / name)
        out[name] = Signer.load(tmp_path / "keys" / name)
    return out


@pytest.fixture
def make_agent(tmp_path):
    made: list[AgentHarness] = []

    def make(root: Path | None = None, **settings) -> AgentHarness:
        h = AgentHarness(root or tmp_path / "agent", **settings)
        made.append(h)
        h.wait_recovered()
        return h

    yield make
    for h in made:
        h.close()


def desired_of(agent: AgentHarness, name: str, data: bytes, **kw) -> DesiredDeployment:
    return DesiredDeployment.model_validate(agent.desired(name, data, **kw))


def put(agent: AgentHarness, desired: DesiredDeployment):
    return agent.client.put(f"{CONTROL_PREFIX}/deployments/{desired.name}", content=desired.model_dump_json(),
                            headers={**agent.auth, "Content-Type": "application/json"})


def error_of(r) -> dict:
    return r.json()["error"]


# -- what is signed --------------------------------------------------------------------------------------------

def test_canonical_bytes_are_sorted_compact_json_of_everything_but_the_signature(keys):
    d = DesiredDeployment(name="chat", artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf", quant="Q4_0",
                                                            size_bytes=10, model="m"),
                          runtime_options={"z": 1, "a": "é"})
    expected = (b'edgectl-deployment-v1\n{"artifact":{"digest":"sha256:' + b"a" * 64 + b'","format":"gguf",'
                b'"layout":"file","model":"m","quant":"Q4_0","size_bytes":10},"context_length":2048,"name":"chat",'
                b'"parallel":1,"runtime":"llamacpp","runtime_options":{"a":"\xc3\xa9","z":1},"threads":null}')
    assert canonical_bytes(d) == expected
    signed = keys["fleet"].sign(d)
    assert signed.signature is not None and signed.signature.key_id == keys["fleet"].key_id
    assert canonical_bytes(signed) == expected  # the signature does not sign itself
    assert keys["fleet"].sign(signed) == signed  # ed25519 is deterministic: re-signing changes nothing


def test_a_signature_covers_every_field_and_only_its_key_verifies(keys, tmp_path):
    d = DesiredDeployment(name="chat", artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf", quant="Q4_0",
                                                            size_bytes=10, model="m", layout="tree"))
    signed = keys["fleet"].sign(d)
    verifier = Verifier(tmp_path / "keys" / "fleet.pub")
    verifier.check(signed)
    assert keys["fleet"].verifies(signed) and not keys["other"].verifies(signed)
    changes = [{"name": "other"}, {"runtime": "fake"}, {"context_length": 4096}, {"parallel": 2}, {"threads": 3},
               {"runtime_options": {"n_gpu_layers": 99}},
               {"artifact": d.artifact.model_copy(update={"digest": "sha256:" + "b" * 64})},
               {"artifact": d.artifact.model_copy(update={"size_bytes": 11})},
               {"artifact": d.artifact.model_copy(update={"layout": "file"})}]
    for change in changes:
        tampered = signed.model_copy(update=change)
        assert not keys["fleet"].verifies(tampered), change
        with pytest.raises(Exception, match="changed after it was signed"):
            verifier.check(tampered)


def test_keygen_writes_a_private_key_0600_and_refuses_to_overwrite(tmp_path):
    key_id = generate_key(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert Signer.load(tmp_path / "k").key_id == key_id == Verifier(tmp_path / "k.pub").key_id
    before = (tmp_path / "k").read_bytes()
    with pytest.raises(SigningError, match="already exists"):
        generate_key(tmp_path / "k")
    assert (tmp_path / "k").read_bytes() == before
    (tmp_path / "j.pub").write_text("x")
    with pytest.raises(SigningError, match="j.pub already exists"):
        generate_key(tmp_path / "j")
    assert not (tmp_path / "j").exists()


def test_a_signing_key_readable_by_others_or_not_ed25519_is_refused(tmp_path, keys):
    os.chmod(tmp_path / "keys" / "fleet", 0o644)
    with pytest.raises(SigningError, match="readable by others") as e:
        Signer.load(tmp_path / "keys" / "fleet")
    assert "chmod 600" in e.value.hint
    os.chmod(tmp_path / "keys" / "other.pub", 0o600)  # the public half given as the private key
    with pytest.raises(SigningError, match="not a PEM private key"):
        Signer.load(tmp_path / "keys" / "other.pub")
    with pytest.raises(SigningError, match="cannot read") as e:
        Signer.load(tmp_path / "nope")
    assert "edgectl keygen" in e.value.hint


# -- the agent, in-process -------------------------------------------------------------------------------------

def test_agent_with_a_verify_key_refuses_unsigned_other_key_and_tampered_and_serves_signed(make_agent, keys,
                                                                                             tmp_path):
    agent = make_agent(verify_key_file=tmp_path / "keys" / "fleet.pub")
    agent.upload(agent.A)
    agent.upload(agent.B)
    want = desired_of(agent, "chat", agent.A)

    r = put(agent, want)
    assert r.status_code == 403 and error_of(r)["type"] == "signature_missing"
    assert keys["fleet"].key_id in error_of(r)["message"] and "edgectl keygen" in error_of(r)["hint"]

    r = put(agent, keys["other"].sign(want))
    assert r.status_code == 403 and error_of(r)["type"] == "signature_invalid"
    assert keys["other"].key_id in error_of(r)["message"] and keys["fleet"].key_id in error_of(r)["message"]

    # signed for A, then pointed at B's bytes (both uploaded, both verified against their digests)
    tampered = keys["fleet"].sign(want).model_copy(
        update={"artifact": want.artifact.model_copy(update={"digest": agent.digest_of(agent.B)})})
    r = put(agent, tampered)
    assert r.status_code == 403 and "changed after it was signed" in error_of(r)["message"]
    assert agent.fake.loads == [] and agent.state()["deployments"] == []  # nothing was loaded or recorded

    r = put(agent, keys["fleet"].sign(want))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "serving" and agent.fake.loads == [agent.digest_of(agent.A)]
    assert agent.chat("chat").status_code == 200
    facts = agent.client.get(f"{CONTROL_PREFIX}/facts", headers=agent.auth).json()
    assert facts["verify_key_id"] == keys["fleet"].key_id

    # a refused swap leaves the signed deployment serving
    r = put(agent, keys["other"].sign(desired_of(agent, "chat", agent.B)))
    assert r.status_code == 403
    d = agent.deployment("chat")
    assert d["state"] == "serving" and d["active"]["digest"] == agent.digest_of(agent.A)


@pytest.mark.parametrize("problem", ["missing", "garbage", "private-key"])
def test_agent_whose_verify_key_is_unusable_refuses_everything(make_agent, keys, tmp_path, problem):
    path = {"missing": tmp_path / "keys" / "absent.pub", "garbage": tmp_path / "keys" / "garbage.pub",
            "private-key": tmp_path / "keys" / "fleet"}[problem]
    if problem == "garbage":
        path.write_text("not a key\n")
    agent = make_agent(verify_key_file=path)
    agent.upload(agent.A)
    want = desired_of(agent, "chat", agent.A)
    for attempt in (want, keys["fleet"].sign(want), keys["other"].sign(want)):
        r = put(agent, attempt)
        assert r.status_code == 403, r.text
        err = error_of(r)
        assert err["type"] == "verify_key_unavailable"
        assert str(path) in err["message"] and "refuses every deployment" in err["message"]
        assert "restart the agent" in err["hint"] and "--verify-key-file" in err["hint"]
    assert agent.fake.loads == []
    facts = agent.client.get(f"{CONTROL_PREFIX}/facts", headers=agent.auth).json()
    assert facts["verify_key_id"] == KEY_UNUSABLE


def test_agent_without_a_verify_key_ignores_signatures(make_agent, keys):
    agent = make_agent()
    agent.upload(agent.A)
    assert put(agent, keys["other"].sign(desired_of(agent, "chat", agent.A))).status_code == 200
    assert agent.client.get(f"{CONTROL_PREFIX}/facts", headers=agent.auth).json()["verify_key_id"] is None


def _first_agent(make_agent, keys, root: Path, pub: Path) -> AgentHarness:
    agent = make_agent(root, verify_key_file=pub)
    agent.upload(agent.A)
    agent.upload(agent.B)
    agent.upload(agent.C)
    for data in (agent.A, agent.B):
        assert put(agent, keys["fleet"].sign(desired_of(agent, "chat", data))).status_code == 200
    agent.close()
    return agent


def test_restart_recovers_signed_deployments_including_the_previous_fallback(make_agent, keys, tmp_path):
    pub, root = tmp_path / "keys" / "fleet.pub", tmp_path / "root"
    first = _first_agent(make_agent, keys, root, pub)
    second = make_agent(root, verify_key_file=pub)
    assert second.deployment("chat")["state"] == "serving"
    assert second.chat("chat").headers["X-Edgectl-Artifact"] == first.digest_of(first.B)
    second.close()
    (root / "artifacts" / first.digest_of(first.B)[7:]).unlink()  # the active artifact is gone: fall back
    third = make_agent(root, verify_key_file=pub)
    assert third.chat("chat").headers["X-Edgectl-Artifact"] == first.digest_of(first.A)
    assert "previous" in third.deployment("chat")["last_error"]


@pytest.mark.parametrize("tamper", ["unsigned", "artifact", "settings", "other-key"])
def test_restart_with_a_tampered_state_file_serves_nothing(make_agent, keys, tmp_path, tamper):
    pub, root = tmp_path / "keys" / "fleet.pub", tmp_path / "root"
    first = _first_agent(make_agent, keys, root, pub)
    state = json.loads((root / "state.json").read_text())
    c = {"digest": first.digest_of(first.C), "format": "gguf", "quant": "F32", "size_bytes": len(first.C),
         "model": "tiny", "layout": "file"}
    records = [state["deployments"][0]["desired"], state["loaded"]["chat"], state["previous"]["chat"]]
    for record in records:
        if tamper == "unsigned":
            record["signature"] = None
        elif tamper == "artifact":
            record["artifact"] = c
        elif tamper == "settings":
            record["runtime_options"] = {"chat_template": "{{ evil }}"}
        else:
            record.update(json.loads(keys["other"].sign(DesiredDeployment.model_validate(record)).model_dump_json()))
    if tamper == "artifact":  # the state also says C is active and B previous
        state["deployments"][0]["active"] = c
    (root / "state.json").write_text(json.dumps(state))

    second = make_agent(root, verify_key_file=pub)
    d = second.deployment("chat")
    assert d["state"] == "failed" and "nothing could be loaded" in d["last_error"]
    assert "refusing" in d["last_error"] or "no signed deployment" in d["last_error"]
    assert second.fake.loads == []
    assert second.chat("chat").status_code == 404
    assert second.client.get("/readyz").status_code == 503


def test_restart_with_a_missing_key_file_serves_nothing(make_agent, keys, tmp_path):
    pub, root = tmp_path / "keys" / "fleet.pub", tmp_path / "root"
    _first_agent(make_agent, keys, root, pub)
    pub.unlink()
    second = make_agent(root, verify_key_file=pub)
    d = second.deployment("chat")
    assert d["state"] == "failed" and str(pub) in d["last_error"] and second.fake.loads == []


def test_verify_key_file_comes_from_the_flag_or_the_environment_and_cryptography_stays_unimported(tmp_path):
    from edgectl_agent.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["serve", "--root", str(tmp_path), "--verify-key-file", str(tmp_path / "k.pub")])
    assert settings_from_args(args).verify_key_file == tmp_path / "k.pub"
    code = ("import os, sys\n"
            "from edgectl_agent.app import create_app\n"
            "from edgectl_agent.settings import AgentSettings\n"
            "s = AgentSettings()\n"
            "assert s.verify_key_file is None\n"
            "create_app(s, runtimes={})\n"
            "print('cryptography' in sys.modules)\n"
            "os.environ['EDGECTL_AGENT_VERIFY_KEY_FILE'] = sys.argv[1]\n"
            "create_app(AgentSettings(), runtimes={})\n"
            "print('cryptography' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "k.pub")], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, EDGECTL_AGENT_ROOT=str(tmp_path / "root")))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]  # imported only once a verify key is configured
    assert "every activation will be refused" in r.stderr  # logged at start, not only at the first refusal


# -- edgectl ---------------------------------------------------------------------------------------------------

def test_rollback_is_signed_only_for_settings_edgectl_signed_and_artifacts_it_built(keys, tmp_path):
    from edgectl.builders import ArtifactStore
    from edgectl.spec import BuiltArtifact

    store = ArtifactStore(tmp_path / "store")
    (tmp_path / "blob").write_bytes(b"GGUF old")
    digest, size = store.put_file(tmp_path / "blob")
    store.record(BuiltArtifact(digest=digest, model="m", format="gguf", quant="Q8_0", size_bytes=size,
                               source_digest=digest, tool_version="t", cache_key="c" * 64))
    old = ArtifactRef(digest=digest, format="gguf", quant="Q8_0", size_bytes=size, model="m")
    new = ArtifactRef(digest="sha256:" + "b" * 64, format="gguf", quant="Q4_0", size_bytes=5, model="m")
    current = keys["fleet"].sign(DesiredDeployment(name="chat", artifact=new))

    back = rollback_deployment(current, old, signer=keys["fleet"], store=store)
    assert back.artifact == old and keys["fleet"].verifies(back)
    # settings the device reports but edgectl never signed, or an artifact edgectl did not build: sent unsigned,
    # so an agent that requires signatures refuses them
    assert rollback_deployment(current.model_copy(update={"threads": 64}), old, signer=keys["fleet"],
                               store=store).signature is None
    foreign = old.model_copy(update={"digest": "sha256:" + "c" * 64})
    assert rollback_deployment(current, foreign, signer=keys["fleet"], store=store).signature is None
    assert rollback_deployment(current, old.model_copy(update={"quant": "Q2_K"}), signer=keys["fleet"],
                               store=store).signature is None
    assert rollback_deployment(current, current.artifact, signer=None, store=store) == current


def test_apply_refuses_before_pushing_when_the_agent_trusts_another_key(keys, tmp_path):
    device = Device(name="dev", profile="auto", transport={"type": "local"})

    def ctx(verify_key_id, signer):
        return DeviceContext(device, facts=collect_facts(tmp_path, verify_key_id=verify_key_id), signer=signer)

    check_signing_key("dev", ctx(None, None))
    check_signing_key("dev", ctx(None, keys["fleet"]))
    check_signing_key("dev", ctx(keys["fleet"].key_id, keys["fleet"]))
    for verify_key_id, signer, says in [(keys["fleet"].key_id, keys["other"], keys["other"].key_id),
                                        (keys["fleet"].key_id, None, "signs nothing"),
                                        (KEY_UNUSABLE, keys["fleet"], "cannot load its verify key")]:
        with pytest.raises(Refused, match="nothing was pushed") as e:
            check_signing_key("dev", ctx(verify_key_id, signer))
        assert says in e.value.message and e.value.hint


def test_fleet_signing_key_is_relative_to_its_manifest_and_a_bad_one_names_the_fleet(tmp_path, keys):
    from edgectl.load import load_paths

    m = tmp_path / "m"
    m.mkdir()
    (m / "fleet.yaml").write_text(
        "apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec:\n"
        "  signing: {key_file: ../keys/fleet}\n"
        "  devices: [{name: dev, profile: auto, transport: {type: local}}]\n")
    spec = load_paths([m])
    assert spec.fleets["f"].spec.signing.key_file == str((m / "../keys/fleet").absolute())
    assert signers_for(spec, spec.devices.values())["dev"].key_id == keys["fleet"].key_id
    (m / "fleet.yaml").write_text((m / "fleet.yaml").read_text().replace("../keys/fleet", "../keys/absent"))
    with pytest.raises(SigningError) as e:
        signers_for(load_paths([m]), load_paths([m]).devices.values())
    assert "fleet.yaml:1" in str(e.value) and "edgectl keygen" in str(e.value)
    (m / "fleet.yaml").write_text((m / "fleet.yaml").read_text().replace("key_file", "keyfile"))
    with pytest.raises(SpecErrors, match="fleet.yaml:5"):
        load_paths([m])


def test_local_agent_argv_names_the_verify_key_file():
    argv = agent_argv(Path("/r"), 9000, verify_key_file=Path("/r/verify-key.pub"))
    assert argv[-2:] == ["--verify-key-file", "/r/verify-key.pub"]
    assert "--verify-key-file" not in agent_argv(Path("/r"), 9000)


# -- end to end: edgectl apply, a real agent process, a tiny GGUF ----------------------------------------------

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  signing: {{key_file: {key}}}
  devices:
    - name: this-machine
      profile: auto
      transport: {{type: local}}
      agent: {{port: {port}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{devices: [this-machine]}}
  context_length: 256
  quantization: {{allow: [{quant}]}}
"""


@pytest.mark.integration
def test_apply_signs_the_local_agent_verifies_and_another_key_changes_nothing(tmp_path):
    import httpx
    from gguf import GGUFReader

    from tests.integration.test_apply_local import edgectl, free_port
    from tests.tinymodels import write_tiny_llama_gguf

    home = tmp_path / "home"
    env = dict(os.environ, EDGECTL_HOME=str(home), COLUMNS="200", NO_COLOR="1")
    root = home / "agents" / "this-machine"
    try:
        m = tmp_path / "m"
        (m / "keys").mkdir(parents=True)
        params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(m / "tiny.gguf")).tensors)
        key_a = edgectl("keygen", str(m / "keys" / "a"), env=env).stdout
        assert "key id sha256:" in key_a
        again = edgectl("keygen", str(m / "keys" / "a"), env=env, check=False)
        assert again.returncode == 2 and "already exists" in again.stderr
        edgectl("keygen", str(m / "keys" / "b"), env=env)
        a, b = Signer.load(m / "keys" / "a"), Signer.load(m / "keys" / "b")
        port = free_port()
        (m / "fleet.yaml").write_text(FLEET.format(params=params, key="keys/a", port=port, quant="Q8_0"))

        edgectl("apply", str(m), env=env)
        # the agent edgectl started is pinned to the fleet's public key, and says so
        assert (root / "verify-key.pub").read_bytes() == (m / "keys" / "a.pub").read_bytes()
        token = (root / "token").read_text().strip()
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        assert http.get(f"{CONTROL_PREFIX}/facts").json()["verify_key_id"] == a.key_id
        (dep,) = http.get(f"{CONTROL_PREFIX}/state").json()["deployments"]
        assert dep["state"] == "serving" and dep["desired"]["signature"]["key_id"] == a.key_id
        serving = dep["active"]["digest"]
        chat = http.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200

        # the real agent process refuses the same deployment unsigned, re-signed by b, or changed after signing
        desired = DesiredDeployment.model_validate(dep["desired"])
        for attempt, kind in [(desired.model_copy(update={"signature": None}), "signature_missing"),
                              (b.sign(desired), "signature_invalid"),
                              (desired.model_copy(update={"context_length": 512}), "signature_invalid")]:
            r = http.put(f"{CONTROL_PREFIX}/deployments/tiny", content=attempt.model_dump_json(),
                         headers={"Content-Type": "application/json"})
            assert r.status_code == 403 and r.json()["error"]["type"] == kind, r.text

        # the manifests switch to key b (and ask for another artifact): refused before any byte is pushed
        artifacts_before = http.get(f"{CONTROL_PREFIX}/state").json()["artifacts"]
        (m / "fleet.yaml").write_text(FLEET.format(params=params, key="keys/b", port=port, quant="Q4_0"))
        r = edgectl("apply", str(m), env=env, check=False)
        assert r.returncode == 1, r.stderr
        said = " ".join(r.stderr.split())  # Rich wraps long lines
        assert f"accepts only deployments signed by key {a.key_id}" in said
        assert f"signs with key {b.key_id}" in said and "nothing was pushed" in said and "hint:" in said
        state = http.get(f"{CONTROL_PREFIX}/state").json()
        assert state["artifacts"] == artifacts_before
        (dep,) = state["deployments"]
        assert dep["state"] == "serving" and dep["active"]["digest"] == serving

        # restarted, the agent verifies what state.json says before serving it again
        edgectl("stop", str(m), env=env)
        (m / "fleet.yaml").write_text(FLEET.format(params=params, key="keys/a", port=port, quant="Q8_0"))
        edgectl("apply", str(m), env=env)  # starts the agent again, still pinned to a
        assert http.get(f"{CONTROL_PREFIX}/facts").json()["verify_key_id"] == a.key_id
        (dep,) = http.get(f"{CONTROL_PREFIX}/state").json()["deployments"]
        assert dep["state"] == "serving" and dep["active"]["digest"] == serving
        http.close()
    finally:
        subprocess.run([sys.executable, "-m", "edgectl.cli", "stop", str(tmp_path / "m")], env=env,
                       capture_output=True, timeout=60, check=False, cwd=REPO)


@pytest.mark.integration
def test_apply_replaces_an_agent_started_before_signing_was_turned_on(tmp_path):
    """An agent that runs unverified when its fleet starts signing is replaced by one pinned to the fleet's key,
    which then serves the deployment signed - never "no changes" with an agent that verifies nothing."""
    import httpx
    from gguf import GGUFReader

    from tests.integration.test_apply_local import edgectl, free_port
    from tests.tinymodels import write_tiny_llama_gguf

    home = tmp_path / "home"
    env = dict(os.environ, EDGECTL_HOME=str(home), COLUMNS="200", NO_COLOR="1")
    root = home / "agents" / "this-machine"
    try:
        m = tmp_path / "m"
        (m / "keys").mkdir(parents=True)
        params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(m / "tiny.gguf")).tensors)
        edgectl("keygen", str(m / "keys" / "a"), env=env)
        a = Signer.load(m / "keys" / "a")
        port = free_port()
        unsigned = FLEET.format(params=params, key="keys/a", port=port, quant="Q8_0").replace(
            "  signing: {key_file: keys/a}\n", "")
        assert "signing" not in unsigned
        (m / "fleet.yaml").write_text(unsigned)
        edgectl("apply", str(m), env=env)
        assert not (root / "verify-key.pub").exists()
        token = (root / "token").read_text().strip()
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                            timeout=30)
        assert http.get(f"{CONTROL_PREFIX}/facts").json()["verify_key_id"] is None
        pid_before = (root / "agent.pid").read_text()

        (m / "fleet.yaml").write_text(FLEET.format(params=params, key="keys/a", port=port, quant="Q8_0"))
        r = edgectl("apply", str(m), env=env)
        assert "replaced" in " ".join(r.stdout.split()), r.stdout
        assert (root / "agent.pid").read_text() != pid_before
        assert (root / "verify-key.pub").read_bytes() == (m / "keys" / "a.pub").read_bytes()
        assert http.get(f"{CONTROL_PREFIX}/facts").json()["verify_key_id"] == a.key_id
        (dep,) = http.get(f"{CONTROL_PREFIX}/state").json()["deployments"]
        assert dep["state"] == "serving" and dep["desired"]["signature"]["key_id"] == a.key_id
        # and once pinned and serving signed, a re-apply is a no-op
        again = edgectl("apply", str(m), env=env)
        assert "no changes" in again.stdout, again.stdout
        http.close()
    finally:
        subprocess.run([sys.executable, "-m", "edgectl.cli", "stop", str(tmp_path / "m")], env=env,
                       capture_output=True, timeout=60, check=False, cwd=REPO)
