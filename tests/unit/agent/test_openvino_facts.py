"""The agent reports OpenVINO's devices (openvino.Core().available_devices and their FULL_DEVICE_NAME), asked in a
child process; the planner reads them (golden case intel-npu). Real here: this machine's openvino answers CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edgectl_agent import facts


def test_the_child_is_this_python_asking_openvino() -> None:
    argv = facts.openvino_devices_argv()
    assert argv[:2] == [sys.executable, "-c"] and "available_devices" in argv[2] and "FULL_DEVICE_NAME" in argv[2]


def test_the_answer_is_parsed_from_the_last_line_and_junk_is_none() -> None:
    out = 'a warning from a plugin\n{"CPU": "Intel(R) Core(TM) Ultra 7 155H", "NPU": "Intel(R) AI Boost"}\n'
    assert facts.parse_openvino_devices(out) == {"CPU": "Intel(R) Core(TM) Ultra 7 155H", "NPU": "Intel(R) AI Boost"}
    for junk in ("", "not json", "[1, 2]", '{"CPU": 3}'):
        assert facts.parse_openvino_devices(junk) is None, junk


def test_a_failing_or_hanging_child_reports_none(monkeypatch) -> None:
    def fails(argv, **kw):
        return subprocess.CompletedProcess(argv, 1, stdout="", stderr="boom")

    def hangs(argv, **kw):
        raise subprocess.TimeoutExpired(argv, kw["timeout"])

    for run in (fails, hangs):
        monkeypatch.setattr(facts, "_OPENVINO_PROBE", {})
        assert facts.openvino_devices(run=run) is None


def test_asked_once_until_an_install_changes_sys_path(monkeypatch) -> None:
    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout='{"CPU": "cpu", "GPU": "igpu"}\n', stderr="")

    monkeypatch.setattr(facts, "_OPENVINO_PROBE", {})
    assert facts.openvino_devices(run=run) == {"CPU": "cpu", "GPU": "igpu"}
    assert facts.openvino_devices(run=run) == {"CPU": "cpu", "GPU": "igpu"}
    assert len(calls) == 1
    monkeypatch.setattr(facts, "_path_stamp", lambda: ("changed",))
    facts.openvino_devices(run=run)
    assert len(calls) == 2


def test_this_machines_openvino_devices_are_in_the_facts(monkeypatch) -> None:
    import openvino as ov

    monkeypatch.setattr(facts, "_OPENVINO_PROBE", {})
    core = ov.Core()
    want = {d: core.get_property(d, "FULL_DEVICE_NAME") for d in core.available_devices}
    got = facts.collect_facts(Path.cwd()).openvino_devices
    assert got == want and "CPU" in got, (got, want)


def test_without_openvino_installed_the_facts_say_none(monkeypatch) -> None:
    def not_installed(dist: str) -> str:
        raise facts.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(facts.metadata, "version", not_installed)
    assert facts.openvino_devices() is None
