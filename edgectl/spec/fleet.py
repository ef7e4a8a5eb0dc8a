"""Fleet: the devices edgectl manages, how to reach each, and per-device overrides of its profile."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from edgectl.spec.common import Document, Frozen, LabelValue, Metadata, Name

AUTO_PROFILE = "auto"


class LocalTransport(Frozen):
    type: Literal["local"] = Field(description="This machine: edgectl starts and talks to a local agent.")


# Values that reach remote argv or ssh options: no shell metacharacters, no leading '-' (would read as an option).
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?$"
JUMP_PATTERN = r"^([a-z_][a-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
REMOTE_PATH_PATTERN = r"^(~/|/)[A-Za-z0-9._+/-]*$"
PROGRAM_PATTERN = r"^[A-Za-z0-9._+/][A-Za-z0-9._+/-]*$"
Host = Annotated[str, Field(pattern=HOST_PATTERN)]


class SshTransport(Frozen):
    type: Literal["ssh"] = Field(description="Reach the device over SSH (host keys are always verified).")
    host: Host = Field(description="Host name or IP address of the device.")
    user: Name | None = Field(default=None, description="SSH user; defaults to the current user.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    key_file: str | None = Field(default=None, description="Private key file; defaults to ssh-agent and ~/.ssh keys.")
    proxy_jump: Annotated[str, Field(pattern=JUMP_PATTERN)] | None = Field(
        default=None, description="Bastion to connect through, as [user@]host[:port] (like ssh -J); its host key "
                                  "is verified the same way.")
    agent_dir: Annotated[str, Field(pattern=REMOTE_PATH_PATTERN)] = Field(
        default="~/.local/share/edgectl-agent",
        description="Directory on the device for the agent's venv, wheels, store and token ('~/' = the SSH "
                    "user's home).")
    python: Annotated[str, Field(pattern=PROGRAM_PATTERN)] = Field(
        default="python3", description="Python (3.11+) on the device used to create the agent's venv.")
    venv: Annotated[str, Field(pattern=REMOTE_PATH_PATTERN)] | None = Field(
        default=None,
        description="The agent's venv on the device (default: agent_dir/venv). Point it at a venv baked into the "
                    "device image, or one on a filesystem several devices share: edgectl installs into it only "
                    "when it lacks this agent version or a needed runtime.")
    service: Literal["auto", "system", "user", "none"] = Field(
        default="auto",
        description="How a bootstrapped agent is kept running: 'system' = a systemd system unit (the SSH user must "
                    "be root), 'user' = a systemd user unit with linger enabled (starts at boot without a login), "
                    "'none' = a detached process (not restarted at boot). 'auto' picks system when the SSH user is "
                    "root and systemd runs, else user when the user's systemd runs, else none. (The ansible engine's "
                    "playbook always starts it detached.) On macOS the agent always runs as a launchd agent and in "
                    "Termux as a termux-services service (both need install: on-device).")
    install: Literal["wheelhouse", "on-device"] = Field(
        default="wheelhouse",
        description="How the agent's packages reach the device: 'wheelhouse' = binary wheels for its platform, "
                    "downloaded or cross-built on this machine (no compiler on the device); 'on-device' = "
                    "this machine pushes a source distribution of every package that has no binary for the "
                    "device's platform (and of those in from_source) with the build tools they declare, and the "
                    "device compiles them with its own compiler (pip --no-index). Needed for Android (Termux) and "
                    "macOS devices. The device needs a C/C++ compiler, CMake, ninja and Python's headers (Termux: "
                    "`pkg install python clang cmake ninja`; macOS: `xcode-select --install` and `brew install "
                    "cmake ninja`).")
    from_source: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]] = Field(
        default_factory=list,
        description="With install: on-device, distributions built on the device even where a binary wheel for "
                    "its platform exists (e.g. llama-cpp-python or numpy tuned to the device's CPU).")

    @model_validator(mode="after")
    def _from_source_needs_on_device(self) -> SshTransport:
        if self.from_source and self.install != "on-device":
            raise ValueError("from_source lists packages to build on the device, which only install: on-device "
                             "does: set install: on-device, or remove from_source")
        return self


# Docker engine addresses: the local socket, an engine over SSH, or TCP (TLS only: a plain TCP engine is root for all).
ENGINE_PATTERN = (r"^(unix:///[A-Za-z0-9._+/-]+"
                  r"|ssh://([a-z_][a-z0-9_.-]{0,31}@)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?"
                  r"|tcp://[A-Za-z0-9]([A-Za-z0-9.:-]*[A-Za-z0-9])?:[0-9]{1,5})$")
# A Docker image reference ([registry/]repo[:tag]); no digests or spaces.
IMAGE_PATTERN = r"^[a-z0-9]([a-z0-9._/-]*[a-z0-9])?(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"


# Docker's names of the architectures edgectl builds agent images for, by every spelling (arm64 = aarch64).
DOCKER_ARCHES = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}
DOCKER_PLATFORM_PATTERN = r"^linux/(amd64|arm64)$"


class DockerTransport(Frozen):
    type: Literal["docker"] = Field(description="Run the agent in a container on a Docker engine (docker SDK).")
    engine: Annotated[str, Field(pattern=ENGINE_PATTERN)] | None = Field(
        default=None, description="Engine address: unix:///path (local socket), ssh://[user@]host[:port] (an engine "
                                  "reached over SSH), or tcp://host:port (TLS, see tls_cert_path). Default: "
                                  "$DOCKER_HOST, else the local socket.")
    tls_cert_path: str | None = Field(
        default=None, description="Folder with ca.pem, cert.pem and key.pem for a tcp:// engine (mutual TLS, "
                                  "verified); required with tcp://.")
    image: Annotated[str, Field(pattern=IMAGE_PATTERN)] | None = Field(
        default=None, description="Agent image tag. Built from deploy/docker/Dockerfile when the engine lacks it. "
                                  "Default: edgectl-agent:<agent version>-<runtime extras>, with -arm64 after it for "
                                  "linux/arm64.")
    base_image: Annotated[str, Field(pattern=IMAGE_PATTERN)] | None = Field(
        default=None, description="Base image the agent image is built FROM (a build argument; make it offline with "
                                  "deploy/docker/make-base.sh). Default: edgectl-base:debian12 for linux/amd64, "
                                  "edgectl-base:debian12-arm64 for linux/arm64.")
    container: Name | None = Field(default=None, description="Container name. Default: edgectl-agent-<device>.")
    volume: Name | None = Field(default=None, description="Named volume holding the agent's store, state and "
                                                          "token. Default: edgectl-agent-<device>.")
    control: Literal["port", "exec"] = Field(
        default="port", description="How edgectl reaches the agent: 'port' publishes it on the engine host's "
                                    "127.0.0.1 only (local engines); 'exec' relays HTTP through `docker exec` to the "
                                    "agent's loopback inside the container (any engine, nothing published).")
    host_port: int | None = Field(default=None, ge=1, le=65535,
                                  description="Port on the engine host's 127.0.0.1 for control 'port'. Default: "
                                              "the device's agent.port.")
    platform: Annotated[str, Field(pattern=DOCKER_PLATFORM_PATTERN)] | None = Field(
        default=None, description="Platform the agent image is built for and its container runs on: linux/amd64 "
                                  "or linux/arm64 (linux/x86_64 and linux/aarch64 read as those). Default: the "
                                  "engine's own architecture (`docker info`). Set it when the engine runs another "
                                  "architecture under emulation (qemu-user-static registered in binfmt_misc with the "
                                  "fix-binary flag); the base image must be of that platform (make-base.sh "
                                  "--platform).")

    gpus: Literal["all"] | Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="NVIDIA GPUs the agent container gets (Docker's --gpus: a device request): 'all' or "
                                  "a count. The engine's host needs the NVIDIA Container Toolkit (`docker info` lists "
                                  "the nvidia runtime); the vllm runtime in the container serves on them. Default: "
                                  "none.")
    shm_size_mb: int | None = Field(
        default=None, ge=64, description="Size of the container's /dev/shm in MiB (Docker's --shm-size). Default: "
                                         "2048 when the device runs the vllm runtime (vLLM's processes share tensors "
                                         "through it), else Docker's 64.")

    @field_validator("platform", mode="before")
    @classmethod
    def _known_platform(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        os_name, _, arch = value.strip().lower().partition("/")
        normal = DOCKER_ARCHES.get(arch)
        if os_name != "linux" or normal is None:
            raise ValueError(f"platform '{value}' is not one edgectl builds agent images for: use linux/amd64 or "
                             "linux/arm64 (linux/x86_64 and linux/aarch64 mean the same)")
        return f"linux/{normal}"

    @model_validator(mode="after")
    def _engine_rules(self) -> DockerTransport:
        engine = self.engine or ""
        if engine.startswith("tcp://") and not self.tls_cert_path:
            raise ValueError("a tcp:// Docker engine needs tls_cert_path (a folder with ca.pem, cert.pem, key.pem): "
                             "a plain TCP engine gives root on its host to anyone who reaches the port")
        if self.control == "port" and engine.startswith(("ssh://", "tcp://")):
            raise ValueError("control 'port' publishes the agent on the engine host's 127.0.0.1, which this machine "
                             "cannot reach for a remote engine; use control: exec")
        return self


class PullTransport(Frozen):
    type: Literal["pull"] = Field(description="The device pulls: its agent polls the fleet's registry (spec.pull) "
                                              "for a signed desired state that `edgectl apply` publishes; edgectl "
                                              "never connects to it (NAT, LTE, offline for days). Enrol it once "
                                              "with `edgectl enroll DEVICE`. Its profile cannot be 'auto'.")


Transport = Annotated[Union[LocalTransport, SshTransport, DockerTransport, PullTransport],
                      Field(discriminator="type")]


class ProfileOverrides(Frozen):
    memory_gb: float | None = Field(default=None, gt=0, description="Override the profile's total RAM in GB.")
    os_reserved_gb: float | None = Field(default=None, ge=0, description="Override the RAM reserved for the OS.")
    disk_gb: float | None = Field(default=None, gt=0, description="Override the storage for artifacts in GB.")
    default_threads: int | None = Field(default=None, gt=0, description="Override the inference thread count.")
    memory_bandwidth_gbps: float | None = Field(default=None, gt=0, description="Override the peak memory "
                                                                                "bandwidth in GB/s (speed estimates).")
    compute_gflops: float | None = Field(default=None, gt=0, description="Override the CPU's peak GFLOPS (speed "
                                                                         "estimates).")


class AgentEndpoint(Frozen):
    port: int = Field(default=8088, ge=1, le=65535, description="Port the device's agent listens on (127.0.0.1).")


class Device(Frozen):
    name: Name = Field(description="Unique device name.")
    profile: Name = Field(description=f"DeviceProfile name, or '{AUTO_PROFILE}' to derive it from the observed hardware.")
    transport: Transport = Field(description="How edgectl reaches the device.")
    labels: dict[LabelValue, LabelValue] = Field(default_factory=dict, description="Labels used by Deployment selectors.")
    overrides: ProfileOverrides = Field(default_factory=ProfileOverrides, description="Per-device profile overrides.")
    agent: AgentEndpoint = Field(default_factory=AgentEndpoint, description="The device's agent.")


class Signing(Frozen):
    key_file: str = Field(description="ed25519 private key (PEM, mode 0600) that signs every deployment edgectl "
                                      "sends to this fleet's devices; `edgectl keygen PATH` makes one, with its "
                                      "public key in PATH.pub. Relative to this manifest's folder. An agent started "
                                      "with that public key (--verify-key-file) refuses anything not signed by it; "
                                      "edgectl starts local agents with it.")


REGISTRY_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$"
REPOSITORY_PATTERN = r"^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$"
ENV_PREFIX_PATTERN = r"^[A-Z][A-Z0-9_]{0,63}$"


class SiteMirror(Frozen):
    """A registry in pull-through (proxy) mode at a site, in front of spec.pull.registry (edgectl.pull.mirrors)."""

    registry: Annotated[str, Field(pattern=REGISTRY_PATTERN)] = Field(
        description="host[:port] of the site's mirror: a registry in proxy mode of spec.pull.registry (Distribution "
                    "`proxy.remoteurl`, Harbor proxy cache, Zot sync on demand). `edgectl enroll` points the site's "
                    "devices at it; `edgectl apply` fetches each new artifact through it once before publishing the "
                    "states that pin it, so the origin sends one copy per site.")
    plain_http: bool = Field(default=False, description="Speak HTTP to the mirror: only on loopback or a lab network.")
    warm: bool = Field(default=True, description="`edgectl apply` fetches new artifacts through the mirror before "
                                                 "publishing; false for a mirror edgectl cannot reach (then the "
                                                 "devices' first requests fill it, and a mirror that does not "
                                                 "coalesce them may fetch a blob more than once).")
    labels: dict[LabelValue, LabelValue] = Field(
        min_length=1, description="The site's pull devices: those with all these labels poll this mirror (the first "
                                  "mirror that matches, in this list's order).")


class PullRegistry(Frozen):
    registry: Annotated[str, Field(pattern=REGISTRY_PATTERN)] = Field(
        description="OCI registry host[:port] (Distribution, Harbor, Zot, a cloud registry) the fleet's pull "
                    "devices poll.")
    repository: Annotated[str, Field(pattern=REPOSITORY_PATTERN)] = Field(
        description="Repository holding this fleet's artifacts (CNCF ModelPack, tag sha256-<hex>) and desired "
                    "states (tag state-<device>).")
    plain_http: bool = Field(default=False, description="Speak HTTP instead of HTTPS: only for a registry on "
                                                        "loopback or a lab network.")
    credentials_env: Annotated[str, Field(pattern=ENV_PREFIX_PATTERN)] = Field(
        default="EDGECTL_REGISTRY",
        description="edgectl publishes with the user and password in $<this>_USERNAME and $<this>_PASSWORD "
                    "(unset: anonymous). Secrets stay out of manifests.")
    read_credentials_env: Annotated[str, Field(pattern=ENV_PREFIX_PATTERN)] = Field(
        default="EDGECTL_REGISTRY_READ",
        description="`edgectl enroll` writes the read-only user and password in $<this>_USERNAME and "
                    "$<this>_PASSWORD into each device's pull config (give devices a pull-only account).")
    pushgateway: Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._/-]*)?$")] | None = Field(
        default=None, description="Prometheus Pushgateway URL the agents report their status to after every poll "
                                  "(written into their pull config by `edgectl enroll`).")
    prometheus: Annotated[str, Field(pattern=r"^https?://[A-Za-z0-9.:\[\]-]+(/[A-Za-z0-9._/-]*)?$")] | None = Field(
        default=None, description="Prometheus (scraping that Pushgateway with honor_labels) that `edgectl status` "
                                  "reads pull devices' last reports from.")
    poll_interval_s: int = Field(default=300, ge=5, le=86_400,
                                 description="How often agents check for a new state (each adds +-20% jitter).")
    mirrors: list[SiteMirror] = Field(default_factory=list,
                                      description="Site mirrors (pull-through caches) and the devices behind each.")
    wave_wait_s: int | None = Field(
        default=None, ge=10, le=7 * 86_400,
        description="How long `edgectl apply` waits for a wave's devices to report before counting the silent ones "
                    "failed (rolling/canary rollouts). Default: three poll intervals plus 300 s for the transfer.")
    valid_for_h: float = Field(default=168, gt=0, le=8760,
                               description="Hours a published state stays valid; a device that sees only an "
                                           "older one after that reports it stale (freeze attack). Re-run "
                                           "`edgectl apply` within this window to renew it.")


# A file next to the manifest: relative, no '..', no hidden or odd segments (like an artifact tree's paths).
INVENTORY_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._+-]*(/[A-Za-z0-9_][A-Za-z0-9._+-]*){0,15}$"
InventoryPath = Annotated[str, Field(pattern=INVENTORY_PATH_PATTERN)]


class RegistryInventory(Frozen):
    """Pull devices enrolled in the fleet's registry (edgectl.inventory.registry)."""

    prefix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")] = Field(
        default="device-", description="Tag prefix of the enrolment records: every tag '<prefix><device name>' in "
                                       "spec.pull.repository is a pull device (listed with the tags/list API, "
                                       "paginated); its annotations dev.edgectl.profile and dev.edgectl.labels (a "
                                       "JSON object) give its profile and labels.")


class InventorySource(Frozen):
    """Devices listed in a file next to the manifest (edgectl/inventory.py reads it, with file:line errors), or
    enrolled in the fleet's registry."""

    csv: InventoryPath | None = Field(
        default=None, description="A CSV file: a header row, then one device per row. Columns: name (required), "
                                  "profile, transport (ssh or pull; default ssh), host, user, port, and one "
                                  "'label.<key>' column per label. Relative to this manifest's folder.")
    ansible: InventoryPath | None = Field(
        default=None, description="An Ansible inventory, INI or YAML (by suffix: .yml/.yaml are YAML): every host "
                                  "is an SSH device named after it, with ansible_host, ansible_user and "
                                  "ansible_port as its transport, edgectl_profile as its profile, and a label "
                                  "'<group>: \"true\"' for every group it is in (not 'all' or 'ungrouped'). "
                                  "Relative to this manifest's folder.")
    registry: RegistryInventory | None = Field(
        default=None, description="The pull devices enrolled in this fleet's registry (spec.pull): "
                                  "'registry: {}' lists the tags 'device-<name>' (`edgectl.inventory.registry.enrol` "
                                  "writes one). Read when the manifest is loaded, with the publish credentials.")
    profile: Name | None = Field(default=None, description="Profile of the devices whose row or host names none.")
    labels: dict[LabelValue, LabelValue] = Field(default_factory=dict,
                                                 description="Labels added to every device of this source.")

    @model_validator(mode="after")
    def _one_file(self) -> InventorySource:
        if self.registry is not None and (self.csv is not None or self.ansible is not None):
            raise ValueError("an inventory source is a file or the registry, not both: split it into two sources")
        if self.registry is None and (self.csv is None) == (self.ansible is None):
            raise ValueError("an inventory source names exactly one file: 'csv: devices.csv' or "
                             "'ansible: hosts.ini'")
        return self

    @property
    def path(self) -> str:
        return self.csv or self.ansible or ""


class FleetSpec(Frozen):
    devices: list[Device] = Field(default_factory=list, description="The devices of this fleet, written out (with "
                                                                    "spec.inventory: more devices from files).")
    inventory: list[InventorySource] = Field(
        default_factory=list, description="Files that list more devices (CSV, Ansible inventory), for large fleets; "
                                          "read when the manifest is loaded, with the same checks as devices.")
    engine: Literal["ssh", "ansible"] = Field(
        default="ssh",
        description="How `edgectl apply` works on this fleet's SSH devices: 'ssh' (edgectl's own SSH transport) "
                    "or 'ansible' (a playbook run through ansible-runner: forks, serial waves; for large fleets; "
                    "needs `pip install 'edgectl[ansible]'`). `edgectl apply --engine` overrides it.")
    signing: Signing | None = Field(default=None, description="Sign deployments for this fleet's devices (off when "
                                                              "absent).")
    pull: PullRegistry | None = Field(default=None, description="The registry this fleet's pull devices "
                                                                "(transport: {type: pull}) poll.")

    @model_validator(mode="after")
    def _some_devices(self) -> FleetSpec:
        if not self.devices and not self.inventory:
            raise ValueError("a fleet needs devices: list them under spec.devices, or name files that list them "
                             "under spec.inventory")
        return self

    @field_validator("devices")
    @classmethod
    def _unique_names(cls, devices: list[Device]) -> list[Device]:
        seen: set[str] = set()
        for d in devices:
            if d.name in seen:
                raise ValueError(f"duplicate device name '{d.name}': device names must be unique")
            seen.add(d.name)
        return devices

    @model_validator(mode="after")
    def _pull_needs_registry_and_key(self) -> FleetSpec:
        pulling = [d.name for d in self.devices if d.transport.type == "pull"]
        if pulling and self.pull is None:
            raise ValueError(f"device '{pulling[0]}' pulls (transport type pull), but the fleet has no spec.pull: "
                             "add spec.pull with the registry and repository its agents poll")
        if pulling and self.signing is None:
            raise ValueError(f"device '{pulling[0]}' pulls, and pulled states must be signed: add spec.signing "
                             "with a key made by `edgectl keygen PATH`")
        auto = [d.name for d in self.devices if d.transport.type == "pull" and d.profile == AUTO_PROFILE]
        if auto:
            raise ValueError(f"device '{auto[0]}' pulls, so edgectl never observes its hardware: profile "
                             f"'{AUTO_PROFILE}' cannot be planned; name its DeviceProfile")
        return self


class Fleet(Document):
    kind: Literal["Fleet"] = Field(description="Always Fleet.")
    metadata: Metadata = Field(description="Name of the fleet.")
    spec: FleetSpec = Field(description="The devices.")
