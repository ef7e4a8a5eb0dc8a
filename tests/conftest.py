"""Settings for the whole test session.

The agent's enrolment micro-benchmark (edgectl_agent.benchmark: memory bandwidth at an agent's first facts report,
an artifact's prefill/decode rates at its first activation) costs about a second per fresh agent and per first
activation: across the suite's ~100 agents it would add minutes of CI time to tests about other things. It is off
for agents this session starts on this machine, unless a test turns it on - the tests of the benchmark do
(tests/unit/agent/test_agent_benchmark.py, tests/integration/test_speed_enrolment.py). Agents started over SSH or
in containers do not inherit this environment and measure themselves as in production.
"""

import os

os.environ.setdefault("EDGECTL_AGENT_BENCHMARK", "false")
