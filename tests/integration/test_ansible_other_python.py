"""The Ansible engine bootstraps a device of another platform (issue 08 leftover): a real sshd device
(tests/fleet.py) whose Python minor differs from the controller's (3.13 when edgectl runs on 3.11). edgectl reads its
platform over SSH, builds that platform's wheelhouse (the same one the SSH engine pushes: cp313 binary wheels from
the index) and the real ansible-core playbook installs it; the agent serves the tiny GGUF (the health gate is a real
inference), runs on the device's Python, and re-apply is a no-op.

Against the emulated aarch64 device (tests/emulated_arm64.py) the same apply passed once by hand, but took 923 s on
this 2-core machine (every Ansible module runs under qemu), past this feature's CI budget: this test uses the
other-Python device instead."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.integration.test_other_python_device import other_python
from tests.integration.test_ssh_fleet import MODEL, edgectl
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_ansible_engine_installs_the_wheelhouse_of_another_python(tmp_path):
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
        text = fleet.fleet_yaml(profile="x86-cpu-server", python=python)
        (mdir / "fleet.yaml").write_text(text.replace("spec:\n  devices:", "spec:\n  engine: ansible\n  devices:", 1))

        r = edgectl("apply", str(mdir), env=env)
        out = r.stdout + r.stderr
        assert "via ansible" in out and "installed edgectl-agent" in out and "activated tiny" in out, out
        (d,) = fleet.devices
        venv_python = d.home / ".local/share/edgectl-agent/venv/bin/python"
        minor = subprocess.run([str(venv_python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, check=True).stdout.strip()
        assert minor != f"{sys.version_info[0]}.{sys.version_info[1]}"
        assert "no changes" in edgectl("apply", str(mdir), env=env).stdout
