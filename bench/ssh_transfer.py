"""Push throughput over SSH, side by side on the same loopback sshd (tests/fleet.py): OpenSSH `scp`, edgectl's SFTP
put_file (pipelined, sha256-verified), and edgectl's artifact upload to the agent through a direct-tcpip channel.

    PYTHONPATH=.:agent python bench/ssh_transfer.py [--mb 256]

Prints MB/s and the ratio of each edgectl path to scp. Timings, not assertions: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "agent")]

from tests.fleet import SshFleet  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256, help="size of the file pushed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        os.environ["EDGECTL_HOME"] = str(tmp / "home")
        src = tmp / "payload.bin"
        with open(src, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1 << 20))
        size = src.stat().st_size
        digest = "sha256:" + hashlib.sha256(src.read_bytes()).hexdigest()
        with SshFleet(tmp / "fleet", 1) as fleet:
            dev = fleet.devices[0]
            fleet.write_known_hosts(tmp / "home" / "known_hosts")
            results: dict[str, float] = {}

            t0 = time.perf_counter()
            subprocess.run(["scp", "-q", "-i", str(fleet.client_key), "-P", str(dev.port),
                            "-o", f"UserKnownHostsFile={tmp / 'home' / 'known_hosts'}", "-o", "BatchMode=yes",
                            str(src), f"127.0.0.1:{dev.home}/scp.bin"], check=True)
            results["scp (OpenSSH)"] = time.perf_counter() - t0

            from edgectl.spec import Device
            from edgectl.transport.ssh import SshTransport

            t = SshTransport(Device(name=dev.name, profile="auto", agent={"port": dev.agent_port}, transport={
                "type": "ssh", "host": "127.0.0.1", "port": dev.port, "key_file": str(fleet.client_key)}))
            t.connect()
            t0 = time.perf_counter()
            t.put_file(src, f"{dev.home}/sftp.bin")
            results["edgectl put_file (SFTP + sha256)"] = time.perf_counter() - t0

            # the device's agent: started directly on its loopback port (what bootstrap would start)
            root = dev.home / "agent-root"
            agent = subprocess.Popen([sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root),
                                      "--port", str(dev.agent_port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
            try:
                for _ in range(300):
                    if t._health():
                        break
                    time.sleep(0.1)
                client = t.client((root / "token").read_text().strip())
                t0 = time.perf_counter()
                status = client.upload(digest, src)
                results["edgectl upload to agent (channel + sha256)"] = time.perf_counter() - t0
                assert status.complete
            finally:
                agent.terminate()
                agent.wait(10)
                t.close()
        base = results["scp (OpenSSH)"]
        for name, secs in results.items():
            print(f"{name:45s} {size / secs / 1e6:8.1f} MB/s  {secs:6.2f} s  ratio vs scp {base / secs:5.2f}x")


if __name__ == "__main__":
    main()
