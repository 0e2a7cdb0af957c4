#!/usr/bin/env bash
# Creates the virtual environment and installs ppml with everything its job and tests need (Python), and
# what only the tests need outside Python.
#   bash scripts/setup.sh           the virtual environment (`make run`, `make test`)
#   bash scripts/setup.sh azurite   the Azurite storage emulator (npm) the Azure storage tests run against
#                                   (skipped when the pinned version is already there; `make test`)
#   bash scripts/setup.sh jvm       ppml's parquet-java key client (javac against pyspark's jars; skipped
#                                   when the jar of the current source is there; `make run`, `make test`)
#   bash scripts/setup.sh system    the Debian packages the HSM, attestation, broker replica and cluster tests
#                                   run against (SoftHSM2, swtpm, tpm2-tools, Redis; iproute2, tcpdump, faketime
#                                   and iptables for the network-namespace cluster); skipped when their
#                                   commands are there; `make test`
#   bash scripts/setup.sh checkov   checkov, in its own virtual environment .venv-checkov (its pinned
#                                   dependencies conflict with the project's); the deployment tests run it
#                                   (`make test`)
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
AZURITE_DIR=${AZURITE_DIR:-.azurite}
AZURITE_VERSION=3.35.0  # newer releases need Node >= 21
CHECKOV_VENV=${CHECKOV_VENV:-.venv-checkov}
CHECKOV_VERSION=3.3.30

install_checkov() {
    if [ -x "$CHECKOV_VENV/bin/checkov" ] && "$CHECKOV_VENV/bin/pip" show checkov 2>/dev/null \
            | grep -x "Version: $CHECKOV_VERSION" >/dev/null; then
        return 0
    fi
    echo "setup: installing checkov $CHECKOV_VERSION into $CHECKOV_VENV"
    "$PYTHON" -m venv "$CHECKOV_VENV"
    "$CHECKOV_VENV/bin/python" -m pip install -q --upgrade pip
    "$CHECKOV_VENV/bin/python" -m pip install -q "checkov==$CHECKOV_VERSION"
}

install_azurite() {
    local manifest="$AZURITE_DIR/node_modules/azurite/package.json"
    if [ -f "$manifest" ] && grep -q "\"version\": \"$AZURITE_VERSION\"" "$manifest"; then
        return 0
    fi
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        echo "setup: error: npm and node are needed to install Azurite $AZURITE_VERSION (the Azure storage" >&2
        echo "setup:        emulator used by tests/test_azure_storage.py); install Node.js 20 with npm" >&2
        echo "setup:        (e.g. apt-get install nodejs npm) and run 'make test' again" >&2
        exit 1
    fi
    echo "setup: installing Azurite $AZURITE_VERSION into $AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --silent --save-exact "azurite@$AZURITE_VERSION"
}

# command each test needs -> Debian package providing it
SYSTEM_PACKAGES="softhsm2-util:softhsm2 swtpm:swtpm swtpm_setup:swtpm-tools tpm2_quote:tpm2-tools
redis-server:redis-server tcpdump:tcpdump faketime:faketime iptables:iptables ip:iproute2"

install_system_packages() {
    local entry missing=()
    for entry in $SYSTEM_PACKAGES; do
        # one command at a time: `command -v a b` succeeds when any of them is found
        command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    local install=(apt-get install -y -qq "${missing[@]}")
    if [ "$(id -u)" -eq 0 ]; then
        echo "setup: installing Debian packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        echo "setup: installing Debian packages with sudo: ${missing[*]}"
        sudo -n apt-get update -qq
        sudo -n env DEBIAN_FRONTEND=noninteractive "${install[@]}" >/dev/null
    else
        echo "setup: error: the HSM, attestation and cluster tests need the Debian packages: ${missing[*]}" >&2
        echo "setup:        this user is not root and cannot sudo without a password; install them with" >&2
        echo "setup:        sudo apt-get install ${missing[*]}   and run 'make test' again" >&2
        exit 1
    fi
}

build_jvm_client() {
    if ! command -v javac >/dev/null 2>&1; then
        echo "setup: warning: no javac: Spark's own Parquet reader cannot use encrypted Parquet until ppml's" >&2
        echo "setup:          key client is built (install a JDK 17, e.g. apt-get install openjdk-17-jdk-headless," >&2
        echo "setup:          then run 'make setup'); the pyarrow engine works without it" >&2
        return 0
    fi
    "$VENV/bin/python" -m ppml.parquet.jvm
}

if [ "${1:-}" = "jvm" ]; then
    build_jvm_client
    exit 0
fi

if [ "${1:-}" = "system" ]; then
    install_system_packages
    exit 0
fi

if [ "${1:-}" = "azurite" ]; then
    install_azurite
    exit 0
fi

if [ "${1:-}" = "checkov" ]; then
    install_checkov
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "setup: installing ppml and its dependencies (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q -e '.[dev]'
build_jvm_client
