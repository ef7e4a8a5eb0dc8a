"""A real Docker engine for the tests: Debian's dockerd started on a private socket with its data under a temporary
folder, stopped (and its folder removed) afterwards. The agent image's base comes from deploy/docker/make-base.sh,
whose rootfs tarball is cached (EDGECTL_BASE_CACHE), so only the first run ever needs a Debian mirror.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "edgectl-base:debian12"


class Dockerd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.log = folder / "dockerd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=self.url)

    def start(self) -> Dockerd:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise RuntimeError("dockerd not found: install Debian's engine (apt-get install -y docker.io)")
        self.folder.mkdir(parents=True, exist_ok=True)
        # exec-root must be short: containerd's socket paths under it have a 108-byte limit
        self.exec_root = Path("/tmp") / f"edock-{os.getpid()}-{int(time.time())}"
        argv = [dockerd, "--data-root", str(self.folder / "data"), "--exec-root", str(self.exec_root),
                "--host", self.url, "--pidfile", str(self.folder / "docker.pid")]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            if subprocess.run(["docker", "version"], env=self.env, capture_output=True, check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"dockerd did not answer within 60 s:\n{self.log.read_text()[-3000:]}")

    def make_base(self) -> None:
        r = subprocess.run([str(REPO / "deploy" / "docker" / "make-base.sh"), BASE_IMAGE], env=self.env,
                           capture_output=True, text=True, timeout=1200, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"make-base.sh failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=300, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} exited {r.returncode}: {r.stderr}")
        return r

    def stop(self) -> None:
        if self.proc is None:
            return
        for cid in self.docker("ps", "-aq", check=False).stdout.split():
            self.docker("rm", "-f", cid, check=False)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        # dockerd unmounts its overlays on a clean stop; a leftover mount only makes this removal partial
        shutil.rmtree(self.folder / "data", ignore_errors=True)
        shutil.rmtree(self.exec_root, ignore_errors=True)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
