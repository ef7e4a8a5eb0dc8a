"""Run a plan on the devices: observe, plan, build, roll out, remove; and ``diff`` and ``rollback`` beside it.

    observe.py    the devices observed in parallel: facts + state per device (DeviceContext)
    planning.py   plan with the local store's cache hits; build what the plan chose
    rollout.py    the rules both engines share: waves, the halting rule, the health gate rule
    steps.py      one deployment on one device: checks before any byte, push, activate, gate, roll back
    engine.py     edgectl's own engine: a rollout's waves over the devices' transports
    ansible.py    the Ansible engine: the same rollout as one playbook run (inventory, events, bootstrap vars)
    run.py        apply() itself: the order of the work above
    diff.py       desired vs observed per device and deployment
    rollback.py   back to the previous artifact
    report.py     what apply reports: events while working, results per device
"""

from edgectl.apply.diff import diff
from edgectl.apply.engine import ENGINES, engine_of
from edgectl.apply.observe import OBSERVE_PARALLEL, DeviceContext, close_contexts, observe, select_devices
from edgectl.apply.planning import available_sources, build_planned, chosen_recipes, find_built, make_plan
from edgectl.apply.report import ApplyResult, DeviceResult, Events
from edgectl.apply.rollback import rollback
from edgectl.apply.rollout import gate_problems, waves
from edgectl.apply.run import apply
from edgectl.apply.steps import (DISK_MARGIN, Refused, check_disk, check_signing_key, desired_deployment,
                                 disk_shortfall)

__all__ = [
    "DISK_MARGIN", "ENGINES", "OBSERVE_PARALLEL", "ApplyResult", "DeviceContext", "DeviceResult", "Events",
    "Refused", "apply", "available_sources", "build_planned", "check_disk", "check_signing_key", "chosen_recipes",
    "close_contexts", "desired_deployment", "diff", "disk_shortfall", "engine_of", "find_built", "gate_problems",
    "make_plan", "observe", "rollback", "select_devices", "waves",
]
