#!/usr/bin/env bash
# Creates the virtual environment and installs ppml with everything its job and tests need, and the
# Azurite storage emulator (npm) that the Azure storage tests run against.
#   bash scripts/setup.sh           everything
#   bash scripts/setup.sh azurite   only Azurite (skipped when the pinned version is already there)
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
AZURITE_DIR=${AZURITE_DIR:-.azurite}
AZURITE_VERSION=3.35.0  # newer releases need Node >= 21

install_azurite() {
    local manifest="$AZURITE_DIR/node_modules/azurite/package.json"
    if [ -f "$manifest" ] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$manifest"; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        echo "setup: error: npm and node are needed to install Azurite $AZURITE_VERSION (the Azure storage" >&2
        echo "setup:        emulator used by tests/test_azure_storage.py); install Node.js 20 with npm" >&2
        echo "setup:        (e.g. apt-get install nodejs npm) and run 'make setup' again" >&2
        exit 1
    fi
    echo "setup: installing Azurite $AZURITE_VERSION into $AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --silent --save-exact "azurite@$AZURITE_VERSION"
}

if [ "${1:-}" = "azurite" ]; then
    install_azurite
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "setup: installing ppml and its dependencies (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q -e '.[dev]'
install_azurite
