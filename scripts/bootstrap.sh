#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv and make the hardware profiles
# resolvable by their bare names. Idempotent: a second run only checks that everything is there.
# torch is pinned to 2.13.0: an unpinned torch pulls several GB of CUDA packages on CPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.posttrain-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "torch==2.13.0"
  .venv/bin/python -m pip install --quiet -e ".[test]"
  touch "$stamp"
fi
if [ -x scripts/install_profiles.sh ]; then
  scripts/install_profiles.sh
fi
