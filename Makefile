# The two commands of the README (quickstart, test), plus test-fast while you work. Each creates
# .venv on first use (scripts/setup.sh).
#
# Test tiers (tests/conftest.py, docs/testing.md):
#   make test-fast  every in-process test, on two pytest-xdist workers: `pytest -n 2 -m "not slow"`
#   make test       everything, as CI runs it (.ci/run), on three pytest-xdist workers: much of the
#                   slow tier waits (Ray and servers starting, polls, leases running out), and a
#                   third worker fills those waits; the longest tests start first (EXPECTED_S in
#                   tests/conftest.py; the 25 longest of the run are printed at its end)
# A test is `slow` when it starts Ray, runs fpr-sweep (or any Python) in a subprocess, starts a real
# server (MLflow, sshd) or calls torch.compile; tests/conftest.py marks them (SLOW_MODULES,
# SLOW_TESTS, the ray_session fixture). A new test file is fast unless marked; in test-fast a test
# that starts a Python subprocess, Ray or torch.compile fails with a message saying how to mark it.
.PHONY: quickstart test test-fast setup bench

PYTEST = .venv/bin/python -m pytest -q
WORKERS ?= 3
FAST_WORKERS ?= 2

setup:
	@bash scripts/setup.sh

quickstart: setup
	.venv/bin/fpr-sweep run sweeps/quickstart.yaml

test: setup
	$(PYTEST) -n $(WORKERS) --durations=25 tests

test-fast: setup
	$(PYTEST) -n $(FAST_WORKERS) -m "not slow" tests

bench: setup
	.venv/bin/pip install --quiet ".[bench]"
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
