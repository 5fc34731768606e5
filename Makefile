# The two quick-start commands: `make demo` and `make test` (Debian 12, as root).
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Debian's python: python3-unbound (libunbound, the DNSSEC validator) exists only for it, so the
# venv is made from it with --system-site-packages, whatever python3 comes first on PATH.
SYSPY  := /usr/bin/python3
APT    := python3 python3-venv python3-dev python3-unbound dns-root-data gcc libssl-dev make \
          iproute2 iputils-ping procps knot knot-dnsutils strongswan-charon strongswan-swanctl \
          libcharon-extra-plugins libstrongswan-standard-plugins iperf3 tcpdump nftables
export DEBIAN_FRONTEND := noninteractive

.PHONY: setup apt venv build test mutation demo walkthrough bench clean

setup: apt venv build

apt:
	@if ! dpkg -s $(APT) >/dev/null 2>&1; then \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT) >/dev/null; \
	fi
	@# charon is started by the tests, never as a system service
	@systemctl disable --now strongswan-starter strongswan knot >/dev/null 2>&1 || true

venv:
	@test -x $(PY) || $(SYSPY) -m venv --system-site-packages $(VENV)
	@$(PY) -m pip install -q --upgrade pip setuptools wheel Cython
	@$(PY) -m pip install -q -e '.[test]' --no-build-isolation

build:
	@$(PY) setup.py -q build_ext --inplace

# The suite, then the mutation check (tests/mutation.py): a surviving mutant fails the run.
test: setup
	$(PY) -m pytest -q
	$(PY) tests/mutation.py

mutation: setup
	$(PY) tests/mutation.py

demo: setup
	$(VENV)/bin/oe demo

walkthrough: setup
	OE=$(VENV)/bin/oe bash examples/policy-walkthrough.sh

bench: setup
	$(PY) bench/eroute.py
	$(PY) bench/control.py
	$(PY) bench/throughput.py

clean:
	rm -rf build $(VENV) oe/*.so oe/datapath.c *.egg-info
