"""Agent settings: command-line flags override ``EDGECTL_AGENT_*`` environment variables, which override defaults."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AgentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGECTL_AGENT_", frozen=True, extra="forbid")

    root: Path = Field(default=Path("/var/lib/edgectl-agent"),
                       description="Directory holding the artifact store, state.json and the token.")
    host: str = Field(default="127.0.0.1",
                      description="Address to listen on. Loopback by default: edgectl reaches the agent through its "
                                  "transport (SSH tunnel, docker exec, local). A non-loopback address needs "
                                  "allow_remote and makes the serving endpoints require the token too.")
    port: int = Field(default=8088, ge=1, le=65535, description="TCP port to listen on.")
    allow_remote: bool = Field(default=False, description="Permit listening on a non-loopback address.")
    token_file: Path | None = Field(default=None,
                                    description="File holding the bearer token (created with mode 0600 at first "
                                                "start). Default: <root>/token.")
    verify_key_file: Path | None = Field(
        default=None,
        description="ed25519 public key (PEM, the PATH.pub of `edgectl keygen`) that every deployment must be signed "
                    "with. Unset: signatures are not checked. Set but missing or unreadable: every deployment is "
                    "refused (never a silent fallback to no verification). Needs `pip install 'edgectl-agent[sign]'`.")
    pull_config: Path | None = Field(
        default=None,
        description="Pull mode: a pull config (JSON, from `edgectl enroll DEVICE --out FILE`) naming the registry, "
                    "repository, read-only credentials and the fleet's verify key. The agent then polls the "
                    "registry for its signed desired state and applies it itself (edgectl_agent.pull); the "
                    "control API stays available on loopback.")
    smoke_prompt: str = Field(default="The capital of France is",
                              description="Prompt of the smoke inference run before a new artifact is switched in.")
    smoke_max_tokens: int = Field(default=4, ge=1, le=64, description="Tokens the smoke inference generates.")
    verify_on_start: bool = Field(default=False,
                                  description="Re-hash every active artifact at start (slow for big models); the "
                                              "size is always checked.")
    crash_loop_limit: int = Field(default=3, ge=1,
                                  description="Crashes of the agent while loading one artifact, within "
                                              "crash_loop_window_s, that mark it broken: the agent then serves the "
                                              "previous artifact and refuses to load it again.")
    crash_loop_window_s: float = Field(default=600.0, gt=0,
                                       description="Window, in seconds, in which crash_loop_limit crashes count.")
    queue_per_slot: int = Field(default=8, ge=0, le=1000,
                                description="Requests that may wait per slot of a deployment (its parallel): "
                                            "beyond parallel x queue_per_slot waiting, a request gets a 503 with "
                                            "Retry-After at once (edgectl_agent.admission).")
    benchmark: bool = Field(default=True,
                            description="Run the enrolment micro-benchmark (edgectl_agent.benchmark): memory "
                                        "bandwidth at the first facts report, each artifact's prefill/decode rates "
                                        "at its first activation (at most ~10 s, once), kept in <root>/"
                                        "benchmark.json and reported to edgectl's planner.")
    access_log: bool = Field(default=False, description="Log every HTTP request (uvicorn access log).")
    log_level: str = Field(default="info", description="Log level: debug, info, warning or error.")
    http_parser: Literal["auto", "httptools", "h11"] = Field(
        default="auto", description="uvicorn's HTTP implementation: auto takes httptools (C, a fraction of the CPU "
                                    "per streamed chunk) where it is installed, else pure-Python h11.")
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        default="auto", description="uvicorn's event loop: auto takes uvloop where it is installed, else asyncio.")

    @model_validator(mode="after")
    def _default_token_file(self) -> "AgentSettings":
        if self.token_file is None:
            object.__setattr__(self, "token_file", self.root / "token")
        return self

    @property
    def token_path(self) -> Path:
        assert self.token_file is not None  # set by the validator above
        return self.token_file

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)
