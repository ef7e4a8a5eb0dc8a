"""Fault-injection hook for the crash-consistency tests (tests/faults): named crash points in the agent's steps.

``crash_point(step, digest)`` kills this process with SIGKILL (no cleanup, no ``finally``, like a power cut or the
kernel's OOM killer) when the environment variable ``EDGECTL_AGENT_CRASH_AT`` names that step (``load``) or that
step for one artifact (``load:sha256:<hex>``). When the variable is unset, as it always is outside tests, it does
nothing. The steps, in the order an upload and an activation pass them, are ``CRASH_POINTS``.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

CRASH_AT_ENV = "EDGECTL_AGENT_CRASH_AT"
CRASH_POINTS = (
    "upload.begin",            # the upload's size is recorded, no byte received yet
    "upload.after_write",      # the first chunk is written to the partial file
    "verify",                  # every byte received, before the sha256 is checked
    "finish.before_rename",    # sha256 matched, before the move into artifacts/
    "finish.after_rename",     # in artifacts/, its staging size file not yet removed
    "stage.after_link",        # a directory artifact half laid out in staging/
    "stage.before_rename",     # laid out, before the rename into trees/
    "load",                    # the load attempt is recorded, the runtime has not started loading
    "smoke",                   # loaded, before the smoke inference
    "switch.before_state",     # switched in memory, state.json not yet written
    "switch.after_state",      # state.json written, the old model not yet closed
    "cleanup",                 # the old model closed, before garbage collection
    "cleanup.after_delete",    # the first unreferenced artifact deleted
)


def crash_point(step: str, digest: str | None = None) -> None:
    """SIGKILL this process when ``EDGECTL_AGENT_CRASH_AT`` is ``step`` or ``step:digest``; else nothing."""
    wanted = os.environ.get(CRASH_AT_ENV)
    if not wanted or (wanted != step and (digest is None or wanted != f"{step}:{digest}")):
        return
    log.warning("fault injection: crash point %s reached (%s=%s), killing the agent", step, CRASH_AT_ENV, wanted)
    os.kill(os.getpid(), signal.SIGKILL)
