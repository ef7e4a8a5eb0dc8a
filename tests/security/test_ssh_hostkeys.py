"""SSH (issue 06, case 11) against a real sshd whose ForceCommand records every command it is asked to run: an unknown
host is refused and a changed host key aborts with zero commands run, proven on the server side (the record and
sshd's VERBOSE log), through the transport and through the CLI. tests/integration/test_ssh_fleet.py covers the same
refusals with the log alone, plus `edgectl trust`; shell metacharacters in names are refused at validation by
tests/security/test_names.py and tests/unit/test_load.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fleet import SshFleet

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = str(Path(sys._base_executable).resolve())

RECORDER = """#!/bin/sh
# ForceCommand: append the command the client asked for to the record, then run it as sshd would have.
printf '%s\\n' "${{SSH_ORIGINAL_COMMAND:-<login shell>}}" >> {record}
case "$SSH_ORIGINAL_COMMAND" in
  internal-sftp) exec /usr/lib/openssh/sftp-server ;;
esac
exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""


@pytest.fixture
def recorded(tmp_path):
    """One sshd device whose every command is recorded in ``record``; its host key trusted in EDGECTL_HOME."""
    record = tmp_path / "commands.log"
    wrapper = tmp_path / "record-command"
    wrapper.write_text(RECORDER.format(record=record))
    wrapper.chmod(0o755)
    home = tmp_path / "home"
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        dev = fleet.devices[0]
        dev.extra_config = [f"ForceCommand {wrapper}"]
        dev.stop()
        dev.start()  # again, with the recorder
        fleet.write_known_hosts(home / "known_hosts")
        yield fleet, dev, record, home


def transport(fleet, dev, home, monkeypatch):
    from edgectl.spec import Device
    from edgectl.transport.ssh import SshTransport

    monkeypatch.setenv("EDGECTL_HOME", str(home))
    return SshTransport(Device(name=dev.name, profile="x86-cpu-server", agent={"port": dev.agent_port}, transport={
        "type": "ssh", "host": "127.0.0.1", "port": dev.port, "key_file": str(fleet.client_key),
        "python": BASE_PYTHON}))


def commands(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def edgectl(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGECTL_HOME=str(home), COLUMNS="200", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)


def test_the_recorder_sees_every_command_the_transport_runs(recorded, monkeypatch):
    """Positive control: a trusted device runs commands, and the record and the log show each of them."""
    fleet, dev, record, home = recorded
    t = transport(fleet, dev, home, monkeypatch)
    assert t.run(["printf", "%s", "a b;$(id)"]).stdout == "a b;$(id)"
    assert t.run(["true"]).returncode == 0
    t.close()
    assert commands(record) == ["printf %s 'a b;$(id)'", "true"]
    assert dev.authentications() >= 1 and dev.sessions() == 2


def test_a_changed_host_key_aborts_before_any_command_on_the_server(recorded, monkeypatch, tmp_path):
    fleet, dev, record, home = recorded
    t = transport(fleet, dev, home, monkeypatch)
    t.run(["true"])
    t.close()
    before = (commands(record), dev.authentications(), dev.sessions())
    assert before[0] == ["true"]

    from edgectl.errors import TransportError

    new = dev.change_host_key()  # a reinstalled or impersonated device
    t = transport(fleet, dev, home, monkeypatch)
    with pytest.raises(TransportError) as e:
        t.run(["touch", str(tmp_path / "PWNED")])
    assert "HOST KEY CHANGED" in e.value.message and new in e.value.message and "nothing was run" in e.value.message
    t.close()
    # the CLI path too: status observes every device it can reach
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "fleet.yaml").write_text(fleet.fleet_yaml(profile="x86-cpu-server", python=BASE_PYTHON))
    r = edgectl("status", str(tmp_path / "m"), home=home)
    assert "HOST KEY CHANGED" in r.stdout + r.stderr, r.stdout + r.stderr
    # server side: no command recorded, no login accepted, no session started since the key changed
    assert (commands(record), dev.authentications(), dev.sessions()) == before
    assert not (tmp_path / "PWNED").exists()


def test_an_unknown_host_is_refused_before_any_command_on_the_server(recorded, monkeypatch, tmp_path):
    fleet, dev, record, home = recorded
    (home / "known_hosts").write_text("")  # never seen
    t = transport(fleet, dev, home, monkeypatch)
    from edgectl.errors import TransportError

    with pytest.raises(TransportError) as e:
        t.run(["touch", str(tmp_path / "PWNED")])
    assert "is unknown" in e.value.message and dev.fingerprint() in e.value.message
    assert "edgectl trust" in (e.value.hint or "") + e.value.message
    t.close()
    assert commands(record) == [] and dev.authentications() == 0 and dev.sessions() == 0
    assert not (tmp_path / "PWNED").exists()
