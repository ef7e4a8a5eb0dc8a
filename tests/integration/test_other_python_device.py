"""A device whose Python minor differs from the controller's (issue 08): a real sshd device (tests/fleet.py) whose
transport.python is another CPython on this machine (3.13 when edgectl runs on 3.11). edgectl reads its platform,
builds a wheelhouse for that Python (binary wheels for it from the index; llama-cpp-python's ctypes wheel from this
machine fits any Python), bootstraps, serves, and re-apply is a no-op; plan shows the device's Python."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.integration.test_ssh_fleet import MODEL, edgectl
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def other_python() -> str:
    """A CPython 3.10+ of another minor than this one, with venv: on PATH or under pyenv."""
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = [shutil.which(f"python3.{m}") for m in (13, 12, 14, 10)]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-4].*/bin/python3")), reverse=True)
    for python in filter(None, found):
        r = subprocess.run([python, "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                           capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip() != here:
            return python
    raise AssertionError(f"no CPython 3.10+ other than {here} (with venv and ensurepip) on this machine: install one "
                         "(e.g. `pyenv install 3.13` or Debian's python3.13) for the other-Python device test")


def test_a_device_with_another_python_minor_bootstraps_and_serves(tmp_path):
    from gguf import GGUFReader

    python = other_python()
    cache = Path.home() / ".cache" / "edgectl"
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(cache / "wheels"),
               COLUMNS="200", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
        (mdir / "model.yaml").write_text(MODEL.format(params=sum(int(t.n_elements)
                                                                 for t in GGUFReader(tiny).tensors)))
        (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="x86-cpu-server", python=python))

        r = edgectl("apply", str(mdir), env=env)
        assert "activated tiny" in r.stdout and "health gate passed" in r.stdout, r.stdout + r.stderr
        (d,) = fleet.devices
        venv_python = d.home / ".local/share/edgectl-agent/venv/bin/python"
        minor = subprocess.run([str(venv_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert minor != f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert "no changes" in edgectl("apply", str(mdir), env=env).stdout
        assert f"Python {minor}" in edgectl("plan", str(mdir), env=env).stdout
