"""Docker transport and its installer, pure parts: the fleet spec's rules, container/build options, the exec relay's
frame parsing, and the shipped Dockerfile / make-base.sh (checked by a real sh)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpcore
import pytest
from pydantic import ValidationError

from edgectl.errors import MissingExtraError
from edgectl.load import load_text
from edgectl.spec import Device
from edgectl.transport import transport_for
from edgectl.agents.install_docker import (
    agent_args,
    build_args,
    control_label,
    default_image,
    dockerfile_folder,
    run_options,
)
from edgectl.transport.docker import AGENT_ROOT, DockerTransport, ExecStream, client_kwargs, timed_argv

REPO = Path(__file__).resolve().parents[2]


def device(**transport) -> Device:
    return Device(name="box1", profile="x86-cpu-server", agent={"port": 9100},
                  transport={"type": "docker", **transport})


def test_fleet_manifest_with_a_docker_device_loads() -> None:
    [fleet] = load_text("""\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: lab}
spec:
  devices:
    - name: box1
      profile: x86-cpu-server
      transport: {type: docker, engine: "ssh://ops@edge-7:2222", control: exec, volume: models-7}
""")
    (d,) = fleet.spec.devices
    assert (d.transport.engine, d.transport.control, d.transport.volume) == ("ssh://ops@edge-7:2222", "exec",
                                                                              "models-7")
    assert isinstance(transport_for(d), DockerTransport)


@pytest.mark.parametrize("transport, message", [
    ({"engine": "tcp://10.0.0.5:2376"}, "needs tls_cert_path"),                   # plain TCP engine = root for all
    ({"engine": "ssh://edge-7", "control": "port"}, "use control: exec"),         # its loopback is not ours
    ({"engine": "tcp://edge:2376", "tls_cert_path": "/c"}, "use control: exec"),
    ({"engine": "unix:///run/docker.sock; rm -rf /"}, "engine"),                 # shell metacharacters
    ({"engine": "http://edge:2375"}, "engine"),
    ({"image": "Agent:latest"}, "image"),
    ({"image": "-rf"}, "image"),
    ({"container": "--privileged"}, "container"),
    ({"host_port": 0}, "host_port"),
])
def test_bad_docker_transports_are_rejected(transport, message) -> None:
    with pytest.raises(ValidationError, match=message):
        device(**transport)


def test_port_control_publishes_on_loopback_only_with_a_restart_policy_and_the_volume() -> None:
    opts = run_options(device(), "edgectl-agent:0.1.0-llama")
    assert opts["ports"] == {"8088/tcp": ("127.0.0.1", 9100)}  # the device's agent.port by default
    assert opts["restart_policy"] == {"Name": "unless-stopped"}
    assert opts["volumes"] == {"edgectl-agent-box1": {"bind": AGENT_ROOT, "mode": "rw"}}
    assert opts["name"] == "edgectl-agent-box1" and opts["detach"] is True
    assert opts["command"] == ["--host", "0.0.0.0", "--allow-remote", "--port", "8088"]
    assert "network_mode" not in opts
    assert run_options(device(host_port=9555), "x")["ports"] == {"8088/tcp": ("127.0.0.1", 9555)}


def test_exec_control_runs_without_network_and_agent_on_loopback() -> None:
    opts = run_options(device(control="exec", container="agent-a", volume="store-a"), "img")
    assert "ports" not in opts and opts["network_mode"] == "none"
    assert opts["command"] == agent_args("exec") == ["--host", "127.0.0.1", "--port", "8088"]
    assert opts["name"] == "agent-a" and list(opts["volumes"]) == ["store-a"]
    assert control_label(device(control="exec")) == "exec" and control_label(device()) == "port:9100"


def test_image_tag_and_build_args_follow_version_and_extras() -> None:
    from edgectl_agent import __version__

    assert default_image([]) == f"edgectl-agent:{__version__}-base"
    assert default_image(["onnx", "llama"]) == f"edgectl-agent:{__version__}-llama-onnx"
    assert build_args("base:1", ["onnx", "llama"]) == {"BASE": "base:1", "EXTRAS": "llama,onnx",
                                                        "AGENT_VERSION": __version__}


def test_client_kwargs_per_engine_kind() -> None:
    assert client_kwargs(None, None) is None  # docker's own environment: $DOCKER_HOST or the local socket
    assert client_kwargs("unix:///run/docker.sock", None) == {"base_url": "unix:///run/docker.sock"}
    assert client_kwargs("ssh://ops@edge", None) == {"base_url": "ssh://ops@edge", "use_ssh_client": False}
    tls = client_kwargs("tcp://edge:2376", "/certs")["tls"]
    assert tls == {"ca_cert": "/certs/ca.pem", "client_cert": ("/certs/cert.pem", "/certs/key.pem"), "verify": True}


def test_commands_are_argv_under_a_timeout() -> None:
    assert timed_argv(["sha256sum", "/a b"], 30) == ["timeout", "-k", "5", "30", "sha256sum", "/a b"]
    with pytest.raises(TypeError):
        timed_argv("rm -rf /", 5)
    with pytest.raises(ValueError):
        timed_argv([], 5)


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_exec_stream_demultiplexes_docker_frames() -> None:
    ours, theirs = socket.socketpair()
    stream = ExecStream(ours)
    theirs.sendall(frame(1, b"HTTP/1.1 200 OK\r\n") + frame(2, b"relay warning") + frame(1, b"body"))
    theirs.sendall(frame(1, b"x" * 70_000)[:30_000])  # a frame split across reads
    assert stream.read(5, timeout=2) == b"HTTP/"
    assert stream.read(100, timeout=2) == b"1.1 200 OK\r\n"
    assert stream.read(100, timeout=2) == b"body" and stream.stderr == b"relay warning"
    theirs.sendall(frame(1, b"x" * 70_000)[30_000:])
    got = b""
    while len(got) < 70_000:
        got += stream.read(65536, timeout=2)
    assert got == b"x" * 70_000
    stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=2)
    assert theirs.recv(100) == b"GET / HTTP/1.1\r\n\r\n"  # stdin is raw, not framed
    with pytest.raises(httpcore.ReadTimeout):
        stream.read(10, timeout=0.05)
    theirs.close()
    assert stream.read(10, timeout=2) == b""  # EOF: the relay ended
    stream.close()


def test_missing_docker_sdk_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)
    with pytest.raises(MissingExtraError) as e:
        DockerTransport(device()).engine()
    assert "edgectl[docker]" in str(e.value.hint) + str(e.value)


def test_dockerfile_builds_from_an_argument_base_with_volume_and_healthcheck() -> None:
    folder = dockerfile_folder()
    assert folder == REPO / "deploy" / "docker"
    text = (folder / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE=edgectl-base:debian12" and lines[1] == "FROM ${BASE} AS install"
    assert "FROM ${BASE}" in lines and "COPY --from=install /opt/edgectl-agent /opt/edgectl-agent" in lines
    assert "--no-index" in text and "VOLUME /var/lib/edgectl-agent" in text and "HEALTHCHECK" in text
    assert not any(w in text for w in ("apt-get", "curl ", "wget ")), "the image must build offline"
    assert 'CMD ["--host", "127.0.0.1"' in text  # loopback unless edgectl publishes the port


def test_make_base_script_parses_and_refuses_without_its_tools(tmp_path) -> None:
    script = REPO / "deploy" / "docker" / "make-base.sh"
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0
    # no docker on PATH: it says which tool is missing and how to get it, and does nothing else
    r = subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, check=False,
                       env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert r.returncode != 0 and "'docker' not found" in r.stderr and "apt-get install" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_signing_fleet_pins_the_container_agent_like_every_other_target() -> None:
    import io
    import tarfile
    from types import SimpleNamespace

    from edgectl_agent import __version__

    from edgectl.agents.install_docker import (LABEL_CONTROL, LABEL_DEVICE, LABEL_EXTRAS, LABEL_SOURCE,
                                               LABEL_VERIFY_KEY, LABEL_VERSION, VERIFY_KEY_PATH, DockerInstaller,
                                               agent_source_digest, key_archive)

    assert VERIFY_KEY_PATH == f"{AGENT_ROOT}/verify-key.pub"  # on the volume: survives a new image or container
    opts = run_options(device(), "img", verify_key_file=VERIFY_KEY_PATH)
    assert opts["command"] == ["--host", "0.0.0.0", "--allow-remote", "--port", "8088",
                               "--verify-key-file", VERIFY_KEY_PATH]
    assert opts["labels"][LABEL_VERIFY_KEY] == VERIFY_KEY_PATH
    assert "--verify-key-file" not in run_options(device(), "img")["command"]
    assert run_options(device(), "img")["labels"][LABEL_VERIFY_KEY] == ""

    with tarfile.open(fileobj=io.BytesIO(key_archive(b"PEM\n"))) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, tar.extractfile(member).read()) == ("verify-key.pub", 0o644, b"PEM\n")

    # a container running unverified does not fit a fleet that signs: the lifecycle replaces it with a pinned one
    labels = {LABEL_DEVICE: "box1", LABEL_CONTROL: "port:9100", LABEL_VERSION: __version__, LABEL_EXTRAS: "llama",
              LABEL_SOURCE: agent_source_digest(), LABEL_VERIFY_KEY: ""}
    unpinned = SimpleNamespace(labels=labels, attrs={"Config": {"Image": "x"}})
    pinned = SimpleNamespace(labels={**labels, LABEL_VERIFY_KEY: VERIFY_KEY_PATH}, attrs=unpinned.attrs)
    t = DockerTransport(device())
    assert DockerInstaller(t).fits(unpinned, ["llama"])
    assert not DockerInstaller(t, verify_key=b"PEM").fits(unpinned, ["llama"])
    assert DockerInstaller(t, verify_key=b"PEM").fits(pinned, ["llama"])
