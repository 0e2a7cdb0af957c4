# The two commands of the README:
#   make run   set everything up and run the main job on the embedded defaults
#   make test  set everything up and run the whole test suite
# Both are idempotent: the virtual environment in .venv is created once and refreshed when
# pyproject.toml changes.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
AZURITE := .azurite/node_modules/azurite/package.json
CHECKOV := .venv-checkov/bin/checkov
# ppml's parquet-java key client, built with the JDK's javac against pyspark's jars (its name carries a
# digest of its source, so a changed source gives a new jar); rebuilt when a .java file changes.
JAVA_SRC := $(shell find src/ppml/parquet/java -name '*.java' 2>/dev/null)
JVM_STAMP := src/ppml/parquet/java/build/.built
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_CACHE_DIR := 1

.PHONY: setup system-packages run test bench clean

setup: $(STAMP) $(JVM_STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup.sh
	touch $@

$(JVM_STAMP): $(STAMP) $(JAVA_SRC)
	VENV=$(VENV) bash scripts/setup.sh jvm
	mkdir -p $(dir $@) && touch $@

# The Azure storage emulator, for the tests only (npm, into .azurite/); reinstalled if that folder is removed.
$(AZURITE): scripts/setup.sh
	bash scripts/setup.sh azurite
	touch $@

# checkov (static analysis of the rendered Kubernetes objects and the Dockerfile), in its own venv.
$(CHECKOV): scripts/setup.sh
	PYTHON=$(PYTHON) bash scripts/setup.sh checkov
	touch $@

# SoftHSM2, swtpm, tpm2-tools and Redis (Debian packages, needs root or sudo) for the HSM, attestation and
# broker replica tests.
system-packages:
	bash scripts/setup.sh system

run: setup
	$(VENV)/bin/ppml tpch demo --dir demo

test: setup $(AZURITE) $(CHECKOV) system-packages
	$(PY) -m pytest -n 2 --dist loadfile -q

bench: setup
	$(PY) benchmarks/crypto_throughput.py

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis .azurite .venv-checkov
