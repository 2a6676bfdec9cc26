"""Where a sweep's files live: every path under ``results/<name>/``, in one place.

    results/<name>/            one sweep (``<name>-smoke/`` for ``--smoke`` runs)
      sweep.json               the sweep's id, spec hash, history of runs, tracking URI (run/record.py)
      spec.yaml                the spec the trials were planned from (replaced only by --extend)
      driver.lock              the running driver: pid, host, lease (run/lock.py)
      live.json                the running driver's trials (run/live.py; read by `status`)
      tracking/                MLflow writes not sent yet (store/spool.py)
      trials/<trial_id>.parquet  one file per finished trial (its existence marks the trial done)
      trials/.corrupt/         unreadable trial files set aside (store/parquet.py)
      fragments/part-*.parquet   finished trials' files compacted, 1,000 trials per file, as the sweep runs
      results.parquet          every trial file collected into one table
      mlflow.db                the default MLflow store (SQLite), artifacts under mlartifacts/
      tune/<study>/            Ray Tune's experiment state and checkpoints (unless --storage-path)
      report.md, *.png         written by `fpr-sweep report`
      models/<trial_id>.pt     each ok trial's saved model (fpr_core.saved_model), unless keep_models: none
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from orchestrator.sweep.errors import LayoutError

DEFAULT_RESULTS_DIR = "results"
SMOKE_SUFFIX = "-smoke"


def sweep_name(name: str, smoke: bool) -> str:
    """Smoke runs get their own directory so tiny-budget trials never mix with real ones."""
    return f"{name}{SMOKE_SUFFIX}" if smoke else name


@dataclass(frozen=True)
class SweepDir:
    """The directory of one sweep and every path inside it."""

    root: Path

    @classmethod
    def under(cls, results_dir: str | Path, name: str, smoke: bool = False) -> "SweepDir":
        """``results_dir/<name>[-smoke]`` (not resolved, not checked)."""
        return cls(Path(results_dir) / sweep_name(name, smoke))

    @classmethod
    def inside(cls, results_dir: str | Path, name: str, smoke: bool = False) -> "SweepDir":
        """``results_dir/<name>[-smoke]`` resolved, refused if that resolves outside ``results_dir``
        (e.g. a symlink elsewhere)."""
        root = Path(results_dir).resolve()
        path = (root / sweep_name(name, smoke)).resolve()
        if path.parent != root:
            raise LayoutError(f"{root / sweep_name(name, smoke)} resolves to {path}, outside the results dir "
                              f"{root}; remove the link or pick another name / --results-dir.")
        return cls(path)

    @classmethod
    def of(cls, where: "SweepDir | str | Path") -> "SweepDir":
        """``where`` as a SweepDir: one as is, a path as the sweep folder it names (what a caller
        outside the run passes, e.g. a test or a script)."""
        return where if isinstance(where, SweepDir) else cls(Path(where))

    def __fspath__(self) -> str:  # a SweepDir goes wherever its folder's path does (open, Path, shutil)
        return str(self.root)

    def __str__(self) -> str:  # in messages, the folder
        return str(self.root)

    def resolved(self) -> "SweepDir":
        """The same folder with an absolute, symlink-free root (what a store address is built on)."""
        return SweepDir(self.root.resolve())

    @classmethod
    def find(cls, sweep: str, results_dir: Optional[str] = None) -> "SweepDir":
        """The sweep a command names: a sweep directory, else ``<results_dir>/<sweep>`` (default
        results/), resolved; LayoutError naming both places when neither holds a sweep."""
        candidate = cls(Path(sweep))
        if candidate.holds_sweep():
            return cls(candidate.root.resolve())
        in_results = cls.under(results_dir or DEFAULT_RESULTS_DIR, sweep)
        if in_results.root.is_dir():
            return cls(in_results.root.resolve())
        raise LayoutError(f"no sweep {sweep!r}: neither {candidate.root} nor {in_results.root} holds a sweep "
                          "(run `fpr-sweep run SPEC` first, or pass --results-dir).")

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def info(self) -> Path:
        return self.root / "sweep.json"

    @property
    def spec_copy(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def lock(self) -> Path:
        return self.root / "driver.lock"

    @property
    def live(self) -> Path:
        return self.root / "live.json"

    @property
    def spool(self) -> Path:
        return self.root / "tracking"

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def corrupt(self) -> Path:
        return self.trials / ".corrupt"

    def trial_file(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.parquet"

    @property
    def fragments(self) -> Path:
        return self.root / "fragments"

    @property
    def results(self) -> Path:
        return self.root / "results.parquet"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    def tune_storage(self, shared: Optional[str] = None) -> str:
        """Tune's storage path: ``tune/`` by default; under shared storage (``s3://bucket/prefix``, an
        NFS dir) one folder per sweep, so two sweeps never share experiments. A URI is passed to
        Tune as is: saving and restoring both resolve its filesystem from it."""
        if shared is None:
            return str(self.tune)
        base = shared.rstrip("/") if "://" in shared else str(Path(shared).resolve())
        return f"{base}/{self.name}"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def model_file(self, trial_id: str) -> Path:
        """A trial's saved model (weights, EMA weights, resolved config)."""
        return self.models / f"{trial_id}.pt"

    def kept_models(self) -> dict[str, int]:
        """trial_id -> bytes on disk of every kept model."""
        return {p.stem: p.stat().st_size for p in sorted(self.models.glob("*.pt"))} if self.models.is_dir() else {}

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def estimates(self) -> Path:
        """Every number the report prints, one row each (``report.build.write_estimates``)."""
        return self.root / "estimates.parquet"

    def figure(self, stem: str) -> Path:
        """A report figure, ``<stem>.png``."""
        return self.root / f"{stem}.png"

    def holds_sweep(self) -> bool:
        """Does this directory look like a sweep (a run started here)?"""
        return self.info.exists() or self.trials.is_dir()


SweepPath = Union[SweepDir, str, Path]
"""A sweep folder as the run passes it (a SweepDir) or as a user, test or script names it (a path);
``SweepDir.of`` turns either into a SweepDir."""
