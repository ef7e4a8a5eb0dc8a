#!/usr/bin/env bash
# Set up and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
set +e
EDGECTL_TESTS_NO_SKIP=1 .venv/bin/python -m pytest -q --durations=15 "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test.sh: pytest collected no tests - that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
