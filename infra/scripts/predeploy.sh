#!/bin/sh
# azd predeploy hook: see infra/scripts/azd_hooks.py (needs python3 on PATH).
set -eu
cd "$(dirname -- "$0")/../.."
PYTHON=$(command -v python3 || command -v python)
exec "$PYTHON" infra/scripts/azd_hooks.py predeploy
