"""One Docker engine, two architectures (issue 08): an amd64 and an arm64 agent container in the same fleet.

The test's dockerd (tests/dockerd.py) runs on this x86-64 host with qemu-user-static registered in binfmt_misc with
the fix-binary flag (tests/emulated_arm64.require_emulation), so it runs linux/arm64 containers under emulation. Its
two bases are made offline by deploy/docker/make-base.sh: amd64 from the cached debootstrap tarball, arm64 from the
cached Debian 12 arm64 root file system of tests/emulated_arm64.py. One `edgectl apply` builds the agent image for
each device's platform (the arm64 one with the aarch64 wheelhouse: binary wheels for aarch64 and the cross-built
llama-cpp-python, installed by pip under emulation), runs both containers, delivers the tiny GGUF, and the real
`openai` client chats with the arm64 one through its port published on 127.0.0.1. Re-apply changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dockerd import Dockerd
from tests.emulated_arm64 import ensure_arm64_caches, ensure_rootfs_tarball
from tests.fleet import free_port
from tests.tinymodels import platform_fleet_manifests

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
LIBLLAMA = "/opt/edgectl-agent/lib/python3.11/site-packages/llama_cpp/lib/libllama.so"
EM_AARCH64, EM_X86_64 = 0xB7, 0x3E  # ELF e_machine


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    caches = ensure_arm64_caches(log=lambda m: print(m, file=sys.stderr))
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        d.make_base()
        d.make_base("linux/arm64", ensure_rootfs_tarball())
        d.caches = caches
        yield d


def edgectl(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=1200, cwd=REPO, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def elf_machine(engine: Dockerd, container: str, path: str) -> int:
    """e_machine of an ELF file in a container (bytes 18-19, little-endian), read with od (no Python started)."""
    out = engine.docker("exec", container, "od", "-An", "-tu2", "-j18", "-N2", path).stdout
    return int(out.split()[0])


def test_one_apply_deploys_an_amd64_and_an_arm64_container_and_the_arm64_one_answers(tmp_path, engine):
    from openai import OpenAI

    amd_port, arm_port = free_port(), free_port()
    docker = {"type": "docker", "engine": engine.url, "control": "port"}
    mdir = platform_fleet_manifests(tmp_path / "manifests", [
        {"name": "amd", "profile": "x86-cpu-server", "agent": {"port": amd_port}, "transport": docker},
        {"name": "arm", "profile": "raspberry-pi-5", "agent": {"port": arm_port},
         "transport": {**docker, "platform": "linux/arm64"}},
    ])
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]), **engine.caches)

    started = time.monotonic()
    r = edgectl("apply", str(mdir), env=env)
    apply_s = time.monotonic() - started
    assert "amd: " in r.stdout and "arm: " in r.stdout and r.stdout.count("activated tiny") == 2, r.stdout + r.stderr

    # each container runs its platform's image, labelled with it, and its platform's llama.cpp
    for name, platform, machine, elf in (("amd", "linux/amd64", "x86_64", EM_X86_64),
                                         ("arm", "linux/arm64", "aarch64", EM_AARCH64)):
        container = f"edgectl-agent-{name}"
        attrs = json.loads(engine.docker("inspect", container).stdout)[0]
        image = json.loads(engine.docker("image", "inspect", attrs["Image"]).stdout)[0]
        assert f"{image['Os']}/{image['Architecture']}" == platform, image["Architecture"]
        assert image["Config"]["Labels"]["dev.edgectl.platform"] == platform
        assert attrs["Config"]["Labels"]["dev.edgectl.platform"] == platform
        assert engine.docker("exec", container, "uname", "-m").stdout.strip() == machine
        assert elf_machine(engine, container, LIBLLAMA) == elf
    arm_image = json.loads(engine.docker("image", "inspect", "edgectl-base:debian12-arm64").stdout)[0]
    assert arm_image["Architecture"] == "arm64"
    # the arm64 image was built from the wheelhouse of the platform probed in its base (Debian 12: glibc 2.36, 3.11)
    arm_image_id = json.loads(engine.docker("inspect", "edgectl-agent-arm").stdout)[0]["Image"]
    arm_agent = json.loads(engine.docker("image", "inspect", arm_image_id).stdout)[0]
    assert arm_agent["Config"]["Labels"]["dev.edgectl.wheelhouse"].endswith("linux-aarch64-glibc2.36-cp311")

    # a real chat answer from the arm64 container, through the port published on the engine host's 127.0.0.1
    token = engine.docker("exec", "edgectl-agent-arm", "cat", "/var/lib/edgectl-agent/token").stdout.strip()
    client = OpenAI(base_url=f"http://127.0.0.1:{arm_port}/v1", api_key=token, max_retries=0, timeout=300.0)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0

    ids = {n: engine.docker("inspect", "-f", "{{.Id}}", f"edgectl-agent-{n}").stdout.strip() for n in ("amd", "arm")}
    again = edgectl("apply", str(mdir), env=env)
    assert "no changes" in again.stdout, again.stdout + again.stderr
    assert {n: engine.docker("inspect", "-f", "{{.Id}}", f"edgectl-agent-{n}").stdout.strip()
            for n in ("amd", "arm")} == ids

    # the device's service restarts (the container, as a reboot would): the agent comes back serving what it had,
    # from its own state, and edgectl finds nothing to do
    engine.docker("restart", "edgectl-agent-arm")
    deadline = time.monotonic() + 300
    while True:
        try:
            reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                   max_tokens=8)
            break
        except Exception:  # noqa: BLE001 - connection refused / 503 while the emulated agent starts and reloads
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert reply.usage.completion_tokens > 0
    after_restart = edgectl("apply", str(mdir), env=env)
    assert "no changes" in after_restart.stdout, after_restart.stdout + after_restart.stderr
    assert engine.docker("inspect", "-f", "{{.Id}}", "edgectl-agent-arm").stdout.strip() == ids["arm"]
    print(f"\none apply to an amd64 and an arm64 container (both images built): {apply_s:.0f} s", file=sys.stderr)


def test_a_platform_the_engine_has_no_base_for_is_refused_with_the_command_that_makes_it(tmp_path, engine):
    port = free_port()
    mdir = platform_fleet_manifests(tmp_path / "manifests", [
        {"name": "arm2", "profile": "raspberry-pi-5", "agent": {"port": port},
         "transport": {"type": "docker", "engine": engine.url, "platform": "linux/aarch64",
                       "base_image": "edgectl-base:debian12"}},
    ])
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]), **engine.caches)
    r = edgectl("apply", str(mdir), env=env, check=False)
    assert r.returncode != 0
    assert "base image edgectl-base:debian12 is linux/amd64, the device runs linux/arm64" in r.stderr, r.stderr
    assert "make-base.sh --platform linux/arm64" in r.stderr, r.stderr
    assert engine.docker("ps", "-aq", "--filter", "name=edgectl-agent-arm2").stdout.strip() == ""
