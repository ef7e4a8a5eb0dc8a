"""Runtimes: one file each, one interface (``base.Runtime``), one catalog (``runtimes.catalog``) that names them.

Importing this package imports no runtime: ``api.py`` derives its ``RuntimeName`` from the catalog, so the package
must load without the runtimes (which import ``api``). Its names resolve on first use; heavy libraries are imported
only when a model is loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from edgectl_agent.runtimes.catalog import RUNTIMES, load_class

if TYPE_CHECKING:
    from edgectl_agent.runtimes.base import Runtime

# Name -> module that defines it, for ``from edgectl_agent.runtimes import X``.
_EXPORTS = {
    **{name: "edgectl_agent.runtimes.base" for name in ("GenerationParams", "LoadedModel", "Runtime",
                                                          "RuntimeCapabilities", "TensorModel", "TensorSpec")},
    **{r.implementation.partition(":")[2]: r.implementation.partition(":")[0] for r in RUNTIMES},
}

__all__ = [*sorted(_EXPORTS), "default_runtimes"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_runtimes() -> dict[str, Runtime]:
    """Every runtime this agent ships (the catalog's), by the name DesiredDeployment.runtime uses."""
    return {r.name: load_class(r.name)() for r in RUNTIMES}
