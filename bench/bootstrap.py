"""Bootstrap of emulated aarch64 devices from this x86-64 controller: over SSH, and as an arm64 Docker container.

    PYTHONPATH=.:agent python bench/bootstrap.py [--caches DIR] [--reuse-cross-build] [--skip-ssh] [--skip-docker]

Needs root, qemu-user-static (binfmt_misc, fix-binary flag), debootstrap and Debian's docker.io, like
tests/integration/test_arm64_device.py and test_docker_arm64.py, whose devices it uses (tests/emulated_arm64.py,
tests/dockerd.py). The model is the tiny llama GGUF of tests/tinymodels.py, built to Q8_0 once (the artifact store
is shared by every apply here, so its build is not in the timings after the first).

SSH (a Debian 12 arm64 chroot with its own sshd on loopback):

- cold: `edgectl apply` to a fresh device with an empty aarch64 wheelhouse: the wheelhouse is built (binary
  wheels for aarch64 downloaded with pip, llama-cpp-python cross-compiled), pushed, installed by pip under
  emulation, the agent started, the GGUF pushed, activated and health-gated;
- warm: the same to a second fresh device of the same platform: the wheelhouse is a cache hit (no download, no
  build), everything else is the same work.

Docker (one dockerd here, the arm64 container under emulation):

- the arm64 base image made offline from the cached root file system (make-base.sh --platform linux/arm64);
- cold image: `edgectl apply` to an arm64 container device: the base probed, the agent image built (the aarch64
  wheelhouse in the build context, pip install under emulation), the container started, the GGUF delivered;
- warm image: a second arm64 container device: the image is a cache hit.

``--caches DIR``: the wheelhouse and cross-build caches (EDGECTL_WHEELHOUSE, EDGECTL_CROSS_CACHE) start in DIR,
empty when DIR is (default: a new temporary folder, i.e. a wheelhouse built from nothing, cross build included:
~4 min on an idle 2-core machine). ``--reuse-cross-build`` copies the cached cross-built llama-cpp-python wheel
(~/.cache/edgectl/cross) into DIR first: the wheelhouse is still downloaded from nothing, the C++ build is not.
Bytes pushed (SSH): the files that arrived in the device's wheels folder and artifact store. Bytes sent to the
engine (Docker): the build context (the wheelhouse and the Dockerfile). Prints the table, replaces its section of
docs/benchmarks.md and ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402
from tests.emulated_arm64 import Arm64Device, cache_dir, ensure_rootfs_tarball, require_emulation  # noqa: E402
from tests.fleet import free_port, keygen  # noqa: E402
from tests.tinymodels import platform_fleet_manifests  # noqa: E402

AGENT_DIR = "root/.local/share/edgectl-agent"  # the default agent_dir of SSH user root, under the root fs
PI = "linux-aarch64-glibc2.36-cp311"  # the wheelhouse key of a Debian 12 arm64 device / image
MB = 1e6


def edgectl(*args: str, env: dict) -> tuple[float, str]:
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=3600, cwd=REPO, check=False)
    took = time.monotonic() - started
    if r.returncode != 0 or "activated tiny" not in r.stdout:
        raise SystemExit(f"edgectl {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return took, r.stdout


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def wheelhouse_bytes(caches: Path) -> tuple[int, int]:
    house = next((caches / "wheels").glob(f"agent-*-{PI}"), None)
    wheels = sorted(house.glob("*.whl")) if house else []
    return sum(w.stat().st_size for w in wheels), len(wheels)


def ssh_device_manifests(folder: Path, dev: Arm64Device, key: Path) -> Path:
    return platform_fleet_manifests(folder, [{
        "name": dev.name, "profile": "raspberry-pi-5", "agent": {"port": dev.agent_port},
        "transport": {"type": "ssh", "host": "127.0.0.1", "port": dev.port, "user": "root", "key_file": str(key),
                      "python": "/usr/bin/python3"}}], label=dev.name)


def bench_ssh(work: Path, env: dict) -> list[list[object]]:
    key = keygen(work / "client_key")
    rows = []
    for name, what in (("pi-a", "cold: empty wheelhouse, built, pushed, installed"),
                       ("pi-b", "warm: second device, wheelhouse cache hit")):
        dev = Arm64Device(name, work / name, key)
        try:
            dev.start()
            with open(Path(env["EDGECTL_HOME"]) / "known_hosts", "a") as f:
                f.write(dev.host_key_line() + "\n")
            took, _ = edgectl("apply", str(ssh_device_manifests(work / f"m-{name}", dev, key)), env=env)
            pushed = folder_bytes(dev.root / AGENT_DIR / "wheels") + folder_bytes(dev.root / AGENT_DIR / "root/artifacts")
            rows.append([f"SSH {what}", f"{took:.0f} s", f"{pushed / MB:.1f} MB"])
            print(rows[-1], file=sys.stderr)
        finally:
            dev.close()
    return rows


def bench_docker(work: Path, env: dict) -> list[list[object]]:
    from tests.dockerd import Dockerd

    rows = []
    with Dockerd(work / "dockerd") as engine:
        started = time.monotonic()
        engine.make_base("linux/arm64", ensure_rootfs_tarball())
        base = json.loads(engine.docker("image", "inspect", "edgectl-base:debian12-arm64").stdout)[0]
        rows.append(["Docker arm64 base from the cached root fs (make-base.sh --platform linux/arm64)",
                     f"{time.monotonic() - started:.0f} s", f"image {base['Size'] / MB:.0f} MB"])
        house, _ = wheelhouse_bytes(Path(env["EDGECTL_WHEELHOUSE"]).parent)
        env = dict(env, DOCKER_HOST=engine.url)
        for name, what in (("arm-a", "cold: agent image built (pip under emulation), container, GGUF"),
                           ("arm-b", "warm: second container, image cache hit")):
            mdir = platform_fleet_manifests(work / f"m-{name}", [{
                "name": name, "profile": "raspberry-pi-5", "agent": {"port": free_port()},
                "transport": {"type": "docker", "engine": engine.url, "platform": "linux/arm64"}}], label=name)
            took, _ = edgectl("apply", str(mdir), env=env)
            attrs = json.loads(engine.docker("inspect", f"edgectl-agent-{name}").stdout)[0]
            image = json.loads(engine.docker("image", "inspect", attrs["Image"]).stdout)[0]
            sent = f"{house / MB:.1f} MB build context" if name == "arm-a" else "no build"
            rows.append([f"Docker {what}", f"{took:.0f} s", f"{sent}; image {image['Size'] / MB:.0f} MB"])
            print(rows[-1], file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caches", type=Path, help="wheelhouse + cross-build caches (default: a new empty folder)")
    ap.add_argument("--reuse-cross-build", action="store_true",
                    help="copy the cached cross-built llama-cpp-python wheel into the caches first")
    ap.add_argument("--skip-ssh", action="store_true")
    ap.add_argument("--skip-docker", action="store_true")
    args = ap.parse_args()
    require_emulation()
    ensure_rootfs_tarball()
    with tempfile.TemporaryDirectory(prefix="edgectl-bench-bootstrap-") as tmp:
        work = Path(tmp)
        caches = args.caches or work / "caches"
        (caches / "wheels").mkdir(parents=True, exist_ok=True)
        (caches / "cross").mkdir(parents=True, exist_ok=True)
        cross_note = "built here (cold)"
        if args.reuse_cross_build:
            shutil.copytree(cache_dir().parent / "cross", caches / "cross", dirs_exist_ok=True)
            cross_note = "copied from the cache (not rebuilt)"
        (work / "home").mkdir()
        env = dict(os.environ, EDGECTL_HOME=str(work / "home"), EDGECTL_WHEELHOUSE=str(caches / "wheels"),
                   EDGECTL_CROSS_CACHE=str(caches / "cross"), COLUMNS="200", NO_COLOR="1",
                   PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
        rows: list[list[object]] = []
        if not args.skip_ssh:
            rows += bench_ssh(work, env)
        if not args.skip_docker:
            rows += bench_docker(work, env)
        house, count = wheelhouse_bytes(caches)
        rows.append([f"aarch64 wheelhouse ({PI}, agent + llama, {count} wheels)", "", f"{house / MB:.1f} MB"])
    print(table(["step", "time", "bytes"], rows))
    timed = {r[0].split(":")[0]: float(str(r[1]).rstrip(" s")) for r in rows if str(r[1]).endswith(" s")}
    ratios = []
    if "SSH cold" in timed and "SSH warm" in timed:
        ratios.append(f"SSH warm/cold {timed['SSH warm'] / timed['SSH cold']:.2f}")
    if "Docker cold" in timed and "Docker warm" in timed:
        ratios.append(f"Docker warm/cold {timed['Docker warm'] / timed['Docker cold']:.2f}")
    body = (f"The llama-cpp-python aarch64 wheel: {cross_note}. Cold SSH = the first device with an empty "
            "wheelhouse; warm = a second device of the platform (cache hit). Bytes pushed over SSH: what arrived "
            "in the device's wheels folder and artifact store. Docker: one dockerd on this x86-64 host, the arm64 "
            "container under qemu-user-static.\n\n" + table(["step", "time", "bytes"], rows) +
            (f"\n\nRatios: {', '.join(ratios)}." if ratios else ""))
    write_section("bootstrap", "Bootstrap of emulated aarch64 devices: SSH and arm64 Docker (issue 08)", body)
    print(f"bootstrap: {'; '.join(ratios) or 'no pair measured'}")


if __name__ == "__main__":
    main()
