"""The scale benchmark's --smoke mode (10^3 cells and trials) runs end to end and prints every
figure of issue 17 next to its goal, before and after. Timings are not asserted (speed lives in
benchmarks/); the size guard's refusal and the results figures' presence are."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_scale_smoke_prints_every_figure():
    done = subprocess.run([sys.executable, "benchmarks/bench_scale.py", "--smoke", "--before-timeout", "30"],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for figure in ("[1] validate on 10^3 cells", "[1] run --dry-run on 10^3 cells", "[3] size guard",
                   "[2] first trial starts", "[2] Ctrl-C to exit", "[4] collect, 10^3 trials",
                   "[4] status, 10^3 trials", "[4] report, 10^3 trials"):
        assert figure in done.stdout, done.stdout
    assert "x one dataset scan" in done.stdout
