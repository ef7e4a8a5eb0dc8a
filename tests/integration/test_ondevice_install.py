"""On-device installs (issue 08 part 6, Fleet ``transport.install: on-device``) on real sshd devices (tests/fleet.py).

edgectl pushes a source house and the device's own pip compiles what has no binary for it. Here the device has the
controller's platform, so ``from_source`` names what it builds: psutil (a C extension, setuptools) is compiled on
the device with its gcc and Python headers, the agent starts and serves the tiny GGUF (the health gate is a real
inference), and re-apply is a no-op. A second device asks for pydantic-core from source, whose build backend
(maturin, a Rust program) is not on the device: the build fails there for real, apply shows the tail of the device's
pip output and names Rust, and no agent is left behind.

Not built on the device here: llama-cpp-python (6-10 minutes on 2 cores; its sdist path is the same code, and the
controller's own wheel fits this device). The emulated aarch64 and Python-3.13 devices cover other platforms.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.integration.test_ssh_fleet import MODEL, edgectl
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def on_device_fleet(fleet: SshFleet, from_source: list[str]) -> str:
    """The fleet's manifest with every device set to install on the device, building ``from_source`` there."""
    text = fleet.fleet_yaml(profile="x86-cpu-server")
    return text.replace("key_file: ", f"install: on-device, from_source: [{', '.join(from_source)}], key_file: ")


def manifests(tmp_path: Path, fleet: SshFleet, from_source: list[str]) -> Path:
    from gguf import GGUFReader

    mdir = tmp_path / "manifests"
    mdir.mkdir(exist_ok=True)
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    (mdir / "model.yaml").write_text(MODEL.format(params=sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)))
    (mdir / "fleet.yaml").write_text(on_device_fleet(fleet, from_source))
    return mdir


def environment(tmp_path: Path) -> dict:
    cache = Path(os.environ.get("EDGECTL_TEST_CACHE", Path.home() / ".cache" / "edgectl"))
    return dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(cache / "wheels"),
                COLUMNS="200", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))


def test_the_device_builds_what_it_is_told_and_serves(tmp_path):
    env = environment(tmp_path)
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet, ["psutil"])
        r = edgectl("apply", str(mdir), env=env)
        assert "activated tiny" in r.stdout and "health gate passed" in r.stdout, r.stdout + r.stderr
        (d,) = fleet.devices
        agent_dir = d.home / ".local/share/edgectl-agent"
        assert list((agent_dir / "wheels").glob("psutil-*.tar.gz")), "no psutil sdist was pushed"
        # the psutil installed in the device's venv is a wheel the device built itself (linux_x86_64, setuptools),
        # not the index's manylinux one
        (wheel_meta,) = (agent_dir / "venv").glob("lib/python3*/site-packages/psutil-*.dist-info/WHEEL")
        meta = wheel_meta.read_text()
        assert "Generator: setuptools" in meta and "linux_x86_64" in meta and "manylinux" not in meta, meta
        assert not list((agent_dir / "wheels").glob("psutil-*.whl"))
        assert "no changes" in edgectl("apply", str(mdir), env=env).stdout


def test_a_failed_build_on_the_device_shows_its_output_and_what_to_install(tmp_path):
    env = environment(tmp_path)
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet, ["pydantic-core"])
        r = edgectl("apply", str(mdir), env=env, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0, out
        assert "building the agent's packages on the device" in out and "failed" in out, out
        assert "maturin" in out, out  # the device's own pip output: its Rust build backend is missing there
        assert "Rust" in out and "apt-get install build-essential" in out, out  # what to install, and how
        (d,) = fleet.devices
        venv = d.home / ".local/share/edgectl-agent/venv"
        assert not list(venv.glob("lib/python3*/site-packages/edgectl_agent*")), "an agent was half-installed"
        assert not (d.home / ".local/share/edgectl-agent/agent.pid").exists()
