"""One error root for edgectl. Every error carries a hint that says how to fix it.

Library failures (paramiko, subprocess, llama.cpp, httpx) are translated into these at the boundary,
with ``raise ... from e``, so the CLI can print message + hint without a traceback.
"""

from __future__ import annotations


class EdgectlError(Exception):
    """Base of every error edgectl raises on purpose.

    ``exit_code`` is what the CLI exits with: 2 for bad input (nothing was changed), 1 for failures while working.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class SpecError(EdgectlError):
    """A manifest, profile or catalog entry is invalid. ``where`` is ``file:line:column``."""

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None,
                 field: str | None = None) -> None:
        super().__init__(message, hint=hint, where=where)
        self.field = field

    def __str__(self) -> str:
        head = f"{self.where}: " if self.where else ""
        if self.field:
            head += f"{self.field}: "
        text = head + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class SpecErrors(EdgectlError):
    """Several spec errors found in one pass (all of them are reported, not only the first)."""

    exit_code = 2

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__(f"{len(errors)} error(s) in manifests", hint=None)
        self.errors = errors

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class NotFoundError(EdgectlError):
    """A named thing (profile, model, device, deployment, artifact) does not exist; the hint lists known ones."""

    exit_code = 2


class PlanError(EdgectlError):
    """The desired state cannot be planned (e.g. a model fits nowhere and --skip-unfit was not given)."""

    exit_code = 2


# edgectl extras that pull torch (directly, or through optimum-intel). torch goes in first at this exact version: a
# plain `pip install` of the extra would resolve an unpinned torch with several GB of CUDA packages.
TORCH_PIN = "torch==2.13.0"
TORCH_EXTRAS = frozenset({"convert", "onnx-genai", "openvino", "bnb"})


def install_hint(extra: str, package: str = "edgectl") -> str:
    """The exact pip install(s) for an extra, torch first where the extra needs it."""
    install = f"pip install '{package}[{extra}]'"
    if package == "edgectl" and extra in TORCH_EXTRAS:
        return f"pip install {TORCH_PIN} first (an unpinned torch pulls several GB of CUDA packages), then {install}"
    return install


class MissingExtraError(EdgectlError):
    """An optional heavy dependency is not installed."""

    def __init__(self, module: str, extra: str, *, package: str = "edgectl") -> None:
        super().__init__(
            f"this needs the Python module '{module}', which is not installed",
            hint=install_hint(extra, package),
        )
        self.module = module
        self.extra = extra


class BuildError(EdgectlError):
    """Building an artifact failed (quantizer error, unreadable source)."""


class TransportError(EdgectlError):
    """Reaching a device failed (cannot start/contact the agent, transfer failed)."""


class AgentError(EdgectlError):
    """The agent refused or failed a request; ``status`` is the HTTP status it answered with."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


def require_module(module: str, extra: str, *, package: str = "edgectl"):
    """Import an optional module lazily, or raise MissingExtraError naming the exact pip install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(module, extra, package=package) from e
