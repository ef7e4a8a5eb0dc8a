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


def pytest_sessionfinish(session, exitstatus) -> None:
    """Under scripts/test.sh (EDGECTL_TESTS_NO_SKIP=1, as in CI) a skipped test fails the run: setup installs
    everything the suite needs, so a skip means a missing part that would otherwise go unnoticed."""
    if os.environ.get("EDGECTL_TESTS_NO_SKIP") != "1" or exitstatus not in (0, 1):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        for report in skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            reporter.write_line(f"SKIPPED IS A FAILURE HERE: {report.nodeid}: {reason}", red=True)
        reporter.write_line("install what these tests need (scripts/setup.sh test does), or fix their skip "
                            "condition", red=True)
        session.exitstatus = 1
