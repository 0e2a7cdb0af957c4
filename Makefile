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

CLUSTER_DIR ?= /tmp/ppml-cluster

.PHONY: setup system-packages run test test-cluster cluster cluster-down bench clean

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

# SoftHSM2, swtpm, tpm2-tools and Redis for the HSM, attestation and broker replica tests; iproute2,
# tcpdump, faketime and iptables for the cluster tests (Debian packages, needs root or sudo).
system-packages:
	bash scripts/setup.sh system

run: setup
	$(VENV)/bin/ppml tpch demo --dir demo

test: setup $(AZURITE) $(CHECKOV) system-packages
	$(PY) -m pytest -n 2 --dist loadfile -q

# Only the tests on the network-namespace cluster (tests/test_net_cluster.py; need root). `make test` runs them too.
test-cluster: setup $(AZURITE) system-packages
	$(PY) -m pytest -m cluster -q

# A test cluster for people: storage, key broker, Spark master, two workers and a client on their own network
# hosts (network namespaces, needs root), with encrypted TPC-H loaded; prints how to use it.
cluster: setup $(AZURITE) system-packages
	$(PY) tests/netcluster.py up --dir $(CLUSTER_DIR)

cluster-down:
	$(PY) tests/netcluster.py down --dir $(CLUSTER_DIR)

bench: setup
	$(PY) benchmarks/crypto_throughput.py

clean:
	rm -rf $(VENV) demo .pytest_cache .hypothesis .azurite .venv-checkov
