#!/usr/bin/env bash
# The test command (README): install what the tests need, start the services they use, run the suite.
#   ./scripts/test.sh [pytest args...]        (TEST_WORKERS=N: pytest processes; default one per core, at most 4)
# PostgreSQL and Redis are used where they run (127.0.0.1:5432, :6379); where they don't and their binaries
# are installed, this starts them; otherwise the tests that need them skip with a one-line reason. bubblewrap
# (the sandbox) is installed with apt-get when missing and this runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_venv
ensure_bwrap || echo "note: bubblewrap is missing and could not be installed; sandboxed runs will refuse to grade"
ensure_postgres || echo "note: PostgreSQL is not running and could not be started; its tests will skip"
ensure_redis || echo "note: Redis is not running and could not be started; its tests will skip"
ensure_chromium || echo "note: chromium is missing and could not be installed (not root); the scorecard page test will skip"

export PYTHONUNBUFFERED=1
# One pytest process per core (pytest-xdist), at most 4: the suite waits on engines as much as it computes. Each
# test file runs whole on one process, tests/prefect together (tests/support/parallel.py); the processes share no
# database, Redis database, port or folder. TEST_WORKERS=1 runs everything in this one process.
workers=${TEST_WORKERS:-$(nproc)}
if [ "$workers" -gt 4 ]; then workers=4; fi
parallel=()
if [ "$workers" -gt 1 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
set +e
.venv/bin/python -m pytest "${parallel[@]}" "$@"
rc=$?
set -e
# pytest's 5 means "no tests collected": a selection that matched nothing is not a failure of the suite.
if [ "$rc" -eq 5 ]; then
  echo "no tests were collected for this selection"
  exit 0
fi
exit "$rc"
