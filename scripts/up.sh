#!/usr/bin/env bash
# The README's first command: install into .venv if needed, then run the gateway on the embedded default.
#   ./scripts/up.sh [gateway up options...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_venv
exec .venv/bin/gateway up "$@"
