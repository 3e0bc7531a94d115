# raftkv — every set-up step lives here, so a fresh machine needs only `make cluster-up` / `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
SEEDS  ?= 5000
N      ?= 5

.PHONY: venv proto test lint soak sim clean

$(STAMP): pyproject.toml tools/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' -e tools
	@touch $@

venv: $(STAMP)

# The generated code is committed; this regenerates it (tests/server/test_proto_drift.py fails
# when proto/ and raftkv/rpc/ disagree): messages and gRPC services, and their typed stubs
# (.pyi) from mypy-protobuf. Servicer stubs are concrete, as the generated classes are at run
# time (every method answers UNIMPLEMENTED until overridden).
PROTOC_PLUGINS = --plugin=protoc-gen-mypy=$(VENV)/bin/protoc-gen-mypy \
	--plugin=protoc-gen-mypy_grpc=$(VENV)/bin/protoc-gen-mypy_grpc
proto: venv
	$(PY) -m grpc_tools.protoc $(PROTOC_PLUGINS) -Iraftkv/rpc=proto --python_out=. --mypy_out=. \
	  --grpc_python_out=. --mypy_grpc_out=generate_concrete_servicer_stubs:. proto/raftkv.proto

# Everything the tests need: the deploy extra and, as root, the Debian packages for network
# namespaces, nftables, libfaketime and the systemd-nspawn host lab. Prints the branch coverage
# of raftkv/core, measured in the pytest process only: the simulator's spawned workers and the
# real nodes of tests/process are not traced (tracing the workers quadruples the simulator's
# time for one more covered line).
COVERAGE_ARGS = --cov=raftkv.core --cov-branch --cov-report=term-missing:skip-covered

test: venv test-deps infra-deps
	$(PY) -m pytest $(COVERAGE_ARGS)

lint: venv infra-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy raftkv tools/raftkv_tools tests
	$(PY) -m mypy --explicit-package-bases fabfile.py infra/deploy.py infra/wheelhouse.py
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint -q -c infra/ansible/.ansible-lint infra/ansible
	terraform fmt -check -recursive infra/terraform

# Many more seeded clusters than `make test` runs; prints one line per failing seed. The second
# run adds the day-2 faults (wiped disks, one-way cuts, rolling timing changes, suspends with
# CLOCK_BOOTTIME, leadership transfers) to the usual ones, on other seeds.
DAY2_SEEDS ?= 2000
DAY2_FAULTS := crash,delay,drift,duplicate,loss,partition,pause,snapshot,wipe,oneway,lease_change,clockstop,transfer,client_pause,corrupt
# The third adds membership changes (learners added, promoted, removed, the leader too) to all
# of them.
MEMBERSHIP_SEEDS ?= 2000
MEMBERSHIP_FAULTS := $(DAY2_FAULTS),membership
soak: venv
	$(PY) -m tests.simulation --seeds $(SEEDS) --jobs 2
	$(PY) -m tests.simulation --start 100000 --seeds $(DAY2_SEEDS) --faults $(DAY2_FAULTS) \
		--suspend-clock boottime --jobs 2
	$(PY) -m tests.simulation --start 200000 --seeds $(MEMBERSHIP_SEEDS) \
		--faults $(MEMBERSHIP_FAULTS) --suspend-clock boottime --jobs 2

sim: venv
	$(PY) -m tests.simulation --seeds 100

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# --- A local cluster in the background (tools/raftkv_tools/localcluster.py) ----------------
# Files in cluster/: cluster.json, data/logs_node_<id>/, node-<id>.pid, node-<id>.out.
.PHONY: cluster-up cluster-down cluster-clean cluster-status

# CLOUD=gcp deploys to Google Cloud instead (infra/deploy.py: Terraform, then Ansible).
CLOUD ?= local
SSH_KEY ?=
ifeq ($(CLOUD),gcp)
cluster-up: infra-deps
	$(PY) infra/deploy.py up $(if $(SSH_KEY),--ssh-key $(SSH_KEY))

cluster-down: infra-deps
	$(PY) infra/deploy.py down
else
cluster-up: venv
	$(PY) -m raftkv_tools.localcluster up --nodes $(N) --dir cluster

cluster-down: venv
	$(PY) -m raftkv_tools.localcluster down --dir cluster
endif

cluster-clean: venv
	$(PY) -m raftkv_tools.localcluster clean --dir cluster

cluster-status: venv
	$(PY) -m raftkv_tools.localcluster status --dir cluster

# --- Debian packages the tests and tools need ----------------------------------------------
# $(call apt_install_missing,NAME,BIN:PKG ...,NOT_ROOT_MESSAGE,AFTER_INSTALL): installs the
# package of every BIN found neither on PATH nor in /usr/sbin or /sbin, only as root (otherwise
# prints "NAME: NOT_ROOT_MESSAGE" if one is given); quiet and idempotent. `apt-get update` runs
# only if the first install attempt fails (no package lists). AFTER_INSTALL (shell, ending in
# `;`) runs only when something was installed.
define apt_install_missing
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=""; \
	  for pair in $(2); do \
	    bin=$${pair%%:*}; pkg=$${pair##*:}; \
	    command -v $$bin >/dev/null 2>&1 || [ -x /usr/sbin/$$bin ] || [ -x /sbin/$$bin ] || missing="$$missing $$pkg"; \
	  done; \
	  if [ -n "$$missing" ]; then \
	    echo "$(1): installing$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null 2>&1 \
	      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null \
	           && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; }; \
	    $(4) \
	  fi; \
	$(if $(3),else echo "$(1): $(3)"; )fi
endef

# --- Fault tests on real processes (tests/faults) -------------------------------------------
# Network namespaces, nftables partitions and libfaketime need these binaries. Installed only
# when one is missing and only as root (the tests skip with a reason otherwise); quiet and
# idempotent. `apt-get update` runs only if the first install attempt fails (no package lists).
FAULT_PKGS_CHECK = ip:iproute2 nft:nftables faketime:faketime strace:strace setpriv:util-linux

.PHONY: test-deps faults soak-faults

test-deps:
	$(call apt_install_missing,test-deps,$(FAULT_PKGS_CHECK))

# --- Benchmarks (tools/raftkv_tools/bench) -------------------------------------------------
# `make bench` measures our own 3-node cluster (temp dir, fsync on); BENCH_ARGS adds options
# (`make bench BENCH_ARGS="-c 1 --workloads get"`, see `raftkv bench --help`). `make bench-peers`
# runs the whole comparison with etcd 3.4 (Debian) and PySyncObj in one command (~17 min:
# three rounds of every LAN run, medians shown). `make bench-rolling` restarts every node of a
# local cluster three times, followers first and the leader last, under a client, and prints
# each restart's unavailability (raftkv_tools/bench/rolling.py; `BENCH_ARGS="--nodes 5"`,
# `--source DIR` runs the nodes from another checkout; ~20 s for 3 nodes, ~35 s for 5).
# `make bench-growth` is issue 15's growth benchmark (raftkv_tools/bench/growth.py, `raftkv bench
# growth --help`): RSS and data dir of a fresh 3-node cluster after 1,000 SETs and after
# --sets more over the same 1,000 keys, throughput and p99.9 latency in seconds with and without
# a snapshot being written, a follower's restart time (SIGKILL, start, serving), a follower's
# catch-up by InstallSnapshot after --catchup-sets SETs, and etcd's RSS and data dir after the
# same loads. GROWTH_ARGS are its defaults (the issue's sizes, ~8 min here); BENCH_ARGS adds or
# overrides (`make bench-growth BENCH_ARGS="--sets 300000 --json growth.json"`; later options win).
BENCH_ARGS ?=
BENCH_PKGS_CHECK = etcd:etcd-server etcd:etcd-client
BENCH_AFTER_INSTALL = if [ -d /run/systemd/system ]; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi;
BENCH_PEERS_ARGS ?= --against etcd,pysyncobj --rounds 3 --latency --wan 50ms --failover 5 --fill 100000
BENCH_ROLLING_ARGS ?= --nodes 3 --rounds 3
GROWTH_ARGS ?= --sets 1000000 --catchup-sets 500000 --against etcd

.PHONY: bench bench-peers bench-deps bench-rolling bench-growth

bench: venv
	$(VENV)/bin/raftkv bench $(BENCH_ARGS)

# PySyncObj + etcd3 (descriptor source) from PyPI, etcd from Debian (as root; the packaged
# service is not used and is stopped where systemd runs it), and the etcd stubs (cache dir).
bench-deps: venv
	$(PY) -m pip install -q -e '.[dev]' -e 'tools[bench]'
	$(call apt_install_missing,bench-deps,$(BENCH_PKGS_CHECK),,$(BENCH_AFTER_INSTALL))
	@command -v etcd >/dev/null 2>&1 || { echo "bench-deps: etcd is missing (apt-get install etcd-server etcd-client as root)"; exit 1; }
	$(PY) -m raftkv_tools.bench.etcdstubs >/dev/null

bench-peers: bench-deps
	$(VENV)/bin/raftkv bench $(BENCH_PEERS_ARGS) $(BENCH_ARGS)

bench-rolling: venv
	$(PY) -m raftkv_tools.bench.rolling $(BENCH_ROLLING_ARGS) $(BENCH_ARGS)

bench-growth: bench-deps
	$(VENV)/bin/raftkv bench growth $(GROWTH_ARGS) $(BENCH_ARGS)

# The fault tests alone (make test runs them too): kill -9, SIGSTOP, kernel partitions, delay,
# clock skew, lease scenarios, negative controls and short Jepsen-style runs. ~6 min.
faults: venv test-deps
	$(PY) -m pytest tests/faults

# Long randomized runs on real processes (not part of make test): the soak-marked tests
# (every fault, delay proxies), then FAULT_RUNS runs of FAULT_TIME s with kernel partitions.
FAULT_RUNS ?= 10
FAULT_TIME ?= 120
FAULT_SEED ?= 1000
soak-faults: venv test-deps
	RAFTKV_SOAK=1 $(PY) -m pytest -m soak tests/faults
	$(PY) -m tests.faults.jepsen --time $(FAULT_TIME) --runs $(FAULT_RUNS) --seed $(FAULT_SEED) \
	  --nemesis kill,pause,partition,clock

# --- Deployment kit: infra/ (Terraform, Ansible, host lab), fabfile.py --------------------------
# infra-deps: the deploy extras in the venv (raftkv's: ansible-core, ansible-lint, fabric,
# python-terraform, python-hcl2; raftkv-tools': matplotlib) and, as root, the Debian
# packages the host-lab test needs (systemd-nspawn containers on a bridge). Installs only what is
# missing; idempotent.
DEPLOY_STAMP := $(VENV)/.deploy-installed-stamp
INFRA_NOT_ROOT = not root, so no Debian packages installed (the host-lab test will skip)
INFRA_PKGS_CHECK = debootstrap:debootstrap systemd-nspawn:systemd-container ip:iproute2 nft:nftables ssh:openssh-client systemd-analyze:systemd

.PHONY: infra-deps infra-lint infra-test

$(DEPLOY_STAMP): pyproject.toml tools/pyproject.toml $(STAMP)
	$(PY) -m pip install -q -e '.[dev,deploy]' -e 'tools[deploy]'
	@touch $@

infra-deps: $(DEPLOY_STAMP)
	$(call apt_install_missing,infra-deps,$(INFRA_PKGS_CHECK),$(INFRA_NOT_ROOT))

INFRA_PY = fabfile.py infra/deploy.py infra/wheelhouse.py infra/ansible/roles/raftkv/files/raftkv_probe.py \
	tools/raftkv_tools/certs.py tools/raftkv_tools/logreview.py tools/raftkv_tools/logreview_plot.py tests/infra

infra-lint: infra-deps
	$(PY) -m ruff check $(INFRA_PY)
	$(PY) -m ruff format --check $(INFRA_PY)
	$(PY) -m mypy --explicit-package-bases $(INFRA_PY)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/ansible-lint -c infra/ansible/.ansible-lint infra/ansible
	terraform fmt -check -recursive infra/terraform

# The host-lab test boots three containers and deploys to them (~5-10 min on 2 shared cores).
infra-test: infra-deps
	$(PY) -m pytest tests/infra
