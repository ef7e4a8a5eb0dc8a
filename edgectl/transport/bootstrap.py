"""Moved: the SSH target's agent installer is edgectl.agents.install_venv. This name stays only until the callers
(the Ansible engine's helpers in apply) import it from there."""

from edgectl.agents.install_venv import *  # noqa: F401,F403
from edgectl.agents.install_venv import PLATFORM_SCRIPT, RUNTIME_EXTRAS, RemoteLayout  # noqa: F401
