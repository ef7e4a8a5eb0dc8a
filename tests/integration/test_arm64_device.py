"""An emulated linux/aarch64 device over SSH, bootstrapped from this x86-64 controller (issue 08).

The device (tests/emulated_arm64.py) is a Debian 12 arm64 root file system run as a chroot under qemu-user-static,
with its own sshd on a 127.0.0.1 port. `edgectl apply` reads its platform over SSH, builds the aarch64 wheelhouse
here (binary wheels for aarch64 from the index, llama-cpp-python cross-compiled with gcc-aarch64-linux-gnu),
pushes it, installs it with pip --no-index, starts the agent detached (no systemd in a chroot); the aarch64
llama.cpp build serves a tiny GGUF under emulation and answers through the OpenAI API; re-apply is a no-op.

The root file system and the cross-built wheel are made once (minutes) and cached under ~/.cache/edgectl (the
session fixture below); missing qemu-user-static/debootstrap/cross compilers fail the test naming what to install.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.emulated_arm64 import Arm64Device, cache_dir, ensure_rootfs_tarball, require_emulation
from tests.fleet import keygen
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
AGENT_DIR = "root/.local/share/edgectl-agent"  # under the root file system: the default agent_dir of SSH user root

MODEL = """\
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
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{labels: {{site: arm}}}}
  context_length: 256
  threads: 1
  quantization: {{allow: [Q8_0]}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: arm}}
spec:
  devices:
    - name: pi
      profile: raspberry-pi-5
      transport: {{type: ssh, host: 127.0.0.1, port: {port}, user: root, key_file: {key}, python: /usr/bin/python3}}
      agent: {{port: {agent_port}}}
      labels: {{site: arm}}
"""


@pytest.fixture(scope="session")
def arm64_cache() -> dict[str, str]:
    """The cached root file system and the cross-built llama-cpp-python wheel (built here the first time, with
    progress on stderr; seconds when cached). Returns the environment that points edgectl at the caches."""
    require_emulation()
    from edgectl.agents.platform import TargetPlatform
    from edgectl.agents.wheelhouse import cross_build, installed_version

    env = {"EDGECTL_CROSS_CACHE": str(cache_dir().parent / "cross"),
           "EDGECTL_WHEELHOUSE": str(cache_dir().parent / "wheels")}
    ensure_rootfs_tarball(log=lambda m: print(m, file=sys.stderr))
    shown = [0.0]

    def progress(stage: str, done: int, total: int | None) -> None:
        if time.monotonic() - shown[0] > 30:
            shown[0] = time.monotonic()
            print(f"{stage}: {done}/{total}", file=sys.stderr)

    old = os.environ.get("EDGECTL_CROSS_CACHE")
    os.environ["EDGECTL_CROSS_CACHE"] = env["EDGECTL_CROSS_CACHE"]
    try:
        pi = TargetPlatform(os="linux", arch="aarch64", libc="glibc", libc_version="2.36", python="3.11")
        cross_build("llama-cpp-python", installed_version("llama-cpp-python"), pi, progress)
    finally:
        os.environ.pop("EDGECTL_CROSS_CACHE") if old is None else os.environ.update(EDGECTL_CROSS_CACHE=old)
    return env


def edgectl(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=1200, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def test_apply_bootstraps_an_emulated_aarch64_device_and_serves(tmp_path, arm64_cache, monkeypatch):
    from gguf import GGUFReader
    from openai import OpenAI

    home = tmp_path / "home"
    env = dict(os.environ, EDGECTL_HOME=str(home), COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]), **arm64_cache)
    client_key = keygen(tmp_path / "client_key")
    device = Arm64Device("pi", tmp_path / "rootfs", client_key)
    try:
        device.start()
        home.mkdir()
        (home / "known_hosts").write_text(device.host_key_line() + "\n")
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
        params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
        (mdir / "all.yaml").write_text(MODEL.format(params=params, port=device.port, key=client_key,
                                                    agent_port=device.agent_port))

        planned = edgectl("plan", str(mdir), env=env)
        assert "platform aarch64" in planned.stdout, planned.stdout  # from the profile: the agent is not there yet

        started = time.monotonic()
        r = edgectl("apply", str(mdir), env=env)
        cold_s = time.monotonic() - started
        assert "activated tiny" in r.stdout, r.stdout + r.stderr
        venv_python = device.root / AGENT_DIR / "venv/bin/python"
        assert venv_python.exists()
        # the agent's llama.cpp is the cross-built aarch64 one (ELF machine 0xb7 = EM_AARCH64)
        libs = list((device.root / AGENT_DIR / "venv/lib").glob("python3*/site-packages/llama_cpp/lib/libllama.so"))
        assert libs and int.from_bytes(libs[0].read_bytes()[18:20], "little") == 0xB7, libs
        # and it has the extra fast-http: httptools' and uvloop's aarch64 wheels from the index
        site = next((device.root / AGENT_DIR / "venv/lib").glob("python3*/site-packages"))
        fast = [*site.glob("httptools/parser/parser.*.so"), *site.glob("uvloop/loop.*.so")]
        assert len(fast) == 2 and all(int.from_bytes(f.read_bytes()[18:20], "little") == 0xB7 for f in fast), fast

        monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
        from edgectl.agents import connect
        from edgectl.spec import Device

        t = connect(Device(name="pi", profile="raspberry-pi-5", agent={"port": device.agent_port}, transport={
            "type": "ssh", "host": "127.0.0.1", "port": device.port, "user": "root", "key_file": str(client_key),
            "python": "/usr/bin/python3"}))
        try:
            assert t.transport.run(["uname", "-m"]).stdout.strip() == "aarch64"
            client = t.agent(start=False)
            facts = client.facts()
            assert facts.arch == "aarch64" and facts.libc == "glibc" and facts.python == "3.11"
            (dep,) = client.state().deployments
            assert dep.state == "serving" and dep.active.quant == "Q8_0"
            token = (device.root / AGENT_DIR / "root/token").read_text().strip()
            with httpx.Client(transport=t.transport.http_transport(), timeout=300.0) as http:
                openai = OpenAI(base_url=t.endpoint, api_key=token, http_client=http)
                chat = openai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=8)
                assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
        finally:
            t.close()

        pid = (device.root / AGENT_DIR / "agent.pid").read_text()
        again = edgectl("apply", str(mdir), env=env)
        assert "no changes" in again.stdout, again.stdout + again.stderr
        assert (device.root / AGENT_DIR / "agent.pid").read_text() == pid
        planned = edgectl("plan", str(mdir), env=env)
        assert "platform linux/aarch64, libc 2.36, Python 3.11" in planned.stdout, planned.stdout

        # the device's service stops (a reboot would, too): apply starts the agent again, which reloads its
        # deployment from its own state on the device -- nothing is pushed or activated again
        os.kill(int(pid), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{int(pid)}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        restarted = edgectl("apply", str(mdir), env=env)
        assert "activated tiny" not in restarted.stdout and "push" not in restarted.stdout, restarted.stdout
        assert (device.root / AGENT_DIR / "agent.pid").read_text() != pid
        assert "no changes" in edgectl("apply", str(mdir), env=env).stdout
        print(f"first apply to a fresh emulated device: {cold_s:.0f} s", file=sys.stderr)
    finally:
        device.close()
