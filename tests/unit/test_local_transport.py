from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgectl.agents import link
from edgectl.agents.install_local import agent_argv
from edgectl.spec import Device
from edgectl.transport.local import LocalTransport


def test_agent_argv_is_a_list_binding_loopback():
    argv = agent_argv(Path("/r oot"), 9000)
    assert argv == [sys.executable, "-m", "edgectl_agent", "serve", "--root", "/r oot", "--host", "127.0.0.1",
                    "--port", "9000"]


def test_run_refuses_shell_strings(tmp_path):
    t = LocalTransport(Device(name="d", profile="auto", transport={"type": "local"}), root=tmp_path)
    with pytest.raises(TypeError):
        t.run("echo hi; rm -rf /")
    assert t.run(["echo", "a;b"]).stdout == "a;b\n"


def test_agent_not_running_is_none_without_start(tmp_path):
    d = Device(name="d", profile="auto", transport={"type": "local"}, agent={"port": 1})
    assert link(LocalTransport(d, root=tmp_path)).agent(start=False) is None
