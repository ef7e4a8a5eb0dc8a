"""Docker devices of any architecture, pure parts: transport.platform in the Fleet (validated, normalised, file:line
errors), the device's platform from the spec or the engine's `docker info`, per-platform image and base tags, the
container's platform option and label, and make-base.sh's --platform parsing (checked by a real sh). The real
counterpart: tests/integration/test_docker_arm64.py (an amd64 and an arm64 container on one dockerd)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgectl.agents.install_docker import (
    LABEL_PLATFORM,
    DockerInstaller,
    default_base_image,
    default_image,
    device_platform,
    docker_platform,
    engine_platform_of,
    image_platform,
    run_options,
)
from edgectl.errors import EdgectlError
from edgectl.load import load_text
from edgectl.spec import Device
from edgectl.transport.docker import DockerTransport

REPO = Path(__file__).resolve().parents[2]
FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: lab}}
spec:
  devices:
    - name: pi
      profile: raspberry-pi-5
      transport: {{type: docker, platform: {platform}}}
"""


def device(**transport) -> Device:
    return Device(name="pi", profile="raspberry-pi-5", agent={"port": 9100}, transport={"type": "docker", **transport})


@pytest.mark.parametrize("given, read", [("linux/arm64", "linux/arm64"), ("linux/aarch64", "linux/arm64"),
                                         ("linux/amd64", "linux/amd64"), ("linux/x86_64", "linux/amd64"),
                                         ("Linux/ARM64", "linux/arm64")])
def test_a_device_names_its_platform_in_any_spelling_of_the_architecture(given, read) -> None:
    [fleet] = load_text(FLEET.format(platform=given))
    assert fleet.spec.devices[0].transport.platform == read


@pytest.mark.parametrize("given", ["linux/riscv64", "windows/amd64", "arm64", "linux/arm/v7"])
def test_an_unknown_platform_is_refused_at_its_line_with_the_accepted_values(given) -> None:
    with pytest.raises(EdgectlError) as e:
        load_text(FLEET.format(platform=given))
    text = str(e.value)
    assert ":8:" in text and "transport.platform" in text, text  # file:line:column and the field path
    assert f"platform '{given}' is not one edgectl builds agent images for" in text
    assert "use linux/amd64 or linux/arm64" in text


def test_the_device_platform_is_the_spec_s_else_the_engine_s() -> None:
    arm_engine = {"OSType": "linux", "Architecture": "aarch64"}
    x86_engine = {"OSType": "linux", "Architecture": "x86_64"}
    assert engine_platform_of(arm_engine) == "linux/arm64" and engine_platform_of(x86_engine) == "linux/amd64"
    assert device_platform(device(), arm_engine) == "linux/arm64"
    assert device_platform(device(platform="linux/arm64"), x86_engine) == "linux/arm64"  # emulated on that engine
    assert docker_platform("linux", "arm64") == docker_platform("linux", "aarch64") == "linux/arm64"
    assert image_platform({"Os": "linux", "Architecture": "arm64"}) == "linux/arm64"


def test_images_and_bases_are_tagged_per_platform_amd64_keeping_its_old_names() -> None:
    from edgectl_agent import __version__

    assert default_image(["llama"]) == default_image(["llama"], "linux/amd64") == f"edgectl-agent:{__version__}-llama"
    assert default_image(["llama"], "linux/arm64") == f"edgectl-agent:{__version__}-llama-arm64"
    assert default_base_image("linux/amd64") == "edgectl-base:debian12"
    assert default_base_image("linux/arm64") == "edgectl-base:debian12-arm64"


def test_the_container_is_created_for_the_platform_and_labelled_with_it() -> None:
    opts = run_options(device(platform="linux/arm64"), "img", platform="linux/arm64")
    assert opts["platform"] == "linux/arm64" and opts["labels"][LABEL_PLATFORM] == "linux/arm64"
    assert "platform" not in run_options(device(), "img")


def test_a_container_of_another_platform_does_not_fit_and_is_replaced() -> None:
    def installer(**transport) -> DockerInstaller:
        i = DockerInstaller(DockerTransport(device(**transport)))
        i._engine_platform = "linux/amd64"  # what `docker info` said (no engine in a unit test)
        return i

    assert installer(platform="linux/arm64").platform_matches("linux/arm64")
    assert not installer(platform="linux/arm64").platform_matches("linux/amd64")
    assert not installer(platform="linux/arm64").platform_matches(None)  # made before platforms: the engine's own
    assert installer().platform_matches(None) and installer().platform_matches("linux/amd64")
    assert not installer().platform_matches("linux/arm64")
    fitting = SimpleNamespace(labels={"dev.edgectl.device": "pi", "dev.edgectl.control": "port:9100",
                                      LABEL_PLATFORM: "linux/amd64"}, attrs={"Config": {"Image": "mine:1"}})
    assert installer(image="mine:1").fits(fitting, [])
    assert not installer(image="mine:1", platform="linux/arm64").fits(fitting, [])


@pytest.mark.parametrize("argv, message", [(["--platform", "linux/riscv64"], "platform 'linux/riscv64' is not one"),
                                           (["--platform"], "--platform needs a value")])
def test_make_base_refuses_an_unknown_platform_before_doing_anything(tmp_path, argv, message) -> None:
    r = subprocess.run(["/bin/sh", str(REPO / "deploy" / "docker" / "make-base.sh"), *argv], capture_output=True,
                       text=True, check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
