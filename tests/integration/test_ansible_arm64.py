"""The Ansible engine bootstraps a device of another platform (issue 08 leftover): the emulated aarch64 device
(tests/emulated_arm64.py, a Debian 12 arm64 chroot under qemu-user-static with its own sshd) gets the aarch64
wheelhouse edgectl builds for it (the same one the SSH engine pushes; cached with the cross-built llama-cpp-python),
through the real ansible-core playbook; the aarch64 llama.cpp serves the tiny GGUF (the health gate is a real
inference) and re-apply is a no-op."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.emulated_arm64 import Arm64Device
from tests.fleet import keygen
from tests.integration.test_arm64_device import AGENT_DIR, MODEL, arm64_cache, edgectl  # noqa: F401 (fixture)
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_ansible_engine_installs_the_aarch64_wheelhouse_on_an_emulated_device(tmp_path, arm64_cache):  # noqa: F811
    from gguf import GGUFReader

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
        text = MODEL.format(params=sum(int(t.n_elements) for t in GGUFReader(tiny).tensors), port=device.port,
                            key=client_key, agent_port=device.agent_port)
        (mdir / "all.yaml").write_text(text.replace("spec:\n  devices:", "spec:\n  engine: ansible\n  devices:", 1))

        r = edgectl("apply", str(mdir), env=env)
        out = r.stdout + r.stderr
        assert "via ansible" in out and "installed edgectl-agent" in out and "activated tiny" in out, out
        libs = list((device.root / AGENT_DIR / "venv/lib").glob("python3*/site-packages/llama_cpp/lib/libllama.so"))
        assert libs and int.from_bytes(libs[0].read_bytes()[18:20], "little") == 0xB7, libs  # EM_AARCH64
        again = edgectl("apply", str(mdir), env=env)
        assert "no changes" in again.stdout, again.stdout + again.stderr
    finally:
        device.close()
