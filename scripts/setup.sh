#!/usr/bin/env bash
# Creates the virtual environment and installs ppml with everything its job and tests need.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "setup: installing ppml and its dependencies (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q -e '.[dev]'
