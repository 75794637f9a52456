#!/usr/bin/env bash
# The README's first command: install into .venv if needed, then run the gateway on the embedded default.
#   ./scripts/up.sh [gateway up options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_venv
# The default sandbox (SANDBOX_ISOLATION=bwrap) needs bubblewrap: a stack that cannot grade must not look ready.
if [ "${SANDBOX_ISOLATION:-bwrap}" = "bwrap" ] && ! ensure_bwrap; then
  echo "up.sh: bubblewrap (the sandbox) is missing and could not be installed: run 'sudo apt-get install -y bubblewrap' (or set SANDBOX_ISOLATION=none for trusted code only), then ./scripts/up.sh again" >&2
  exit 1
fi
exec .venv/bin/gateway up "$@"
