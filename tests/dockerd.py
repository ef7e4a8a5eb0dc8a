"""A real Docker engine for the tests: Debian's dockerd started on a private socket with its data under a temporary
folder, stopped (and its folder removed) afterwards. The agent image's base comes from deploy/docker/make-base.sh,
whose rootfs tarball is cached (EDGECTL_BASE_CACHE), so only the first run ever needs a Debian mirror.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = "edgectl-base:debian12"


def make_tls(folder: Path) -> tuple[Path, Path]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, as dockerd and the docker
    client want them: ``(server_dir, client_dir)``, each with ca.pem, cert.pem and key.pem."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def cert(name: str, key, issuer_name, issuer_key, *, ca: bool = False, usage=None, ip: str | None = None):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if ip:
            import ipaddress

            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
                                critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem_key(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgectl test CA")])
    ca = cert("edgectl test CA", ca_key, ca_name, ca_key, ca=True)
    out = []
    for role, usage, ip in (("server", ExtendedKeyUsageOID.SERVER_AUTH, "127.0.0.1"),
                            ("client", ExtendedKeyUsageOID.CLIENT_AUTH, None)):
        key = ec.generate_private_key(ec.SECP256R1())
        d = folder / role
        d.mkdir(parents=True, exist_ok=True)
        (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        (d / "cert.pem").write_bytes(cert(role, key, ca_name, ca_key, usage=usage, ip=ip)
                                     .public_bytes(serialization.Encoding.PEM))
        (d / "key.pem").write_bytes(pem_key(key))
        (d / "key.pem").chmod(0o600)
        out.append(d)
    return out[0], out[1]


def reap_stale_engines() -> None:
    """Unmount and remove what test engines that no longer run left under /tmp. A dockerd killed outright (its job
    stopped mid-run) leaves its containers' network namespaces mounted under its exec root: their veths stay on
    docker0 holding their addresses, the next engine gives its containers the same ones (172.17.0.2), and its
    published ports answer with a reset."""
    running = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            running.update(a for a in cmdline.read_bytes().decode(errors="replace").split("\0") if "/edock-" in a)
        except OSError:
            continue
    for root in Path("/tmp").glob("edock-*"):
        if str(root) in running:
            continue
        mounts = [line.split()[:3] for line in Path("/proc/mounts").read_text().splitlines()]
        for _, point, kind in sorted((m for m in mounts if m[1].startswith(f"{root}/")), key=lambda m: -len(m[1])):
            if kind == "nsfs":  # a namespace outlives its unmount for a while: delete its veths' host ends now
                _delete_host_veths(point)
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def _delete_host_veths(netns: str) -> None:
    r = subprocess.run(["nsenter", f"--net={netns}", "ip", "-o", "link"], capture_output=True, text=True,
                       check=False)
    peers = set(re.findall(r"@if(\d+)", r.stdout))
    for index in Path("/sys/class/net").glob("*/ifindex"):
        if index.read_text().strip() in peers:
            subprocess.run(["ip", "link", "delete", index.parent.name], capture_output=True, check=False)


class Dockerd:
    """``tls_port``: also listen on tcp://127.0.0.1:PORT with mutual TLS (certificates from make_tls, under
    ``folder/tls``); the client's folder is ``tls_client``."""

    def __init__(self, folder: Path, *, tls_port: int | None = None) -> None:
        self.folder = folder
        self.socket = folder / "docker.sock"
        self.log = folder / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self.tls_port = tls_port
        self.tls_client: Path | None = None

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
        reap_stale_engines()
        # exec-root must be short: containerd's socket paths under it have a 108-byte limit
        self.exec_root = Path("/tmp") / f"edock-{os.getpid()}-{int(time.time())}"
        argv = [dockerd, "--data-root", str(self.folder / "data"), "--exec-root", str(self.exec_root),
                "--host", self.url, "--pidfile", str(self.folder / "docker.pid")]
        if self.tls_port is not None:
            server, self.tls_client = make_tls(self.folder / "tls")
            argv += ["--host", f"tcp://127.0.0.1:{self.tls_port}", "--tlsverify", "--tlscacert",
                     str(server / "ca.pem"), "--tlscert", str(server / "cert.pem"), "--tlskey", str(server / "key.pem")]
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

    def make_base(self, platform: str | None = None, rootfs: Path | None = None, *, compiler: bool = False) -> None:
        """make-base.sh into this engine: the amd64 base by default; ``platform`` (linux/arm64) another one, from
        the packed root file system ``rootfs`` when given (tests/emulated_arm64.py caches one) instead of a
        debootstrap; ``compiler``: the base with g++ (``--compiler``, the vLLM base's)."""
        argv = [str(REPO / "deploy" / "docker" / "make-base.sh")] + (["--compiler"] if compiler else [])
        argv += ["--platform", platform] if platform else [BASE_IMAGE + ("-cxx" if compiler else "")]
        env = dict(self.env, EDGECTL_BASE_ROOTFS=str(rootfs)) if rootfs else self.env
        r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200, check=False)
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
