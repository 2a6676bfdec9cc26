# The two commands of the README. Both create .venv on first use (scripts/setup.sh).
.PHONY: quickstart test setup bench
setup:
	@bash scripts/setup.sh

quickstart: setup
	.venv/bin/fpr-sweep run sweeps/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/pip install --quiet ".[bench]"
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
