"""`fpr-sweep run` from a dirty git tree: a loud warning (rows would record '...+dirty'), and with
--require-clean or the spec's require_clean: true a refusal (exit 2) before anything is created.
The checked repo is a real throwaway git repo put in the package's place."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_spec
from orchestrator.cli import app
from orchestrator.store import provenance

runner = CliRunner()


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    git = ["git", "-C", str(d), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(d)], check=True)
    (d / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "code.py"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    monkeypatch.setattr(provenance, "REPO_DIR", d)
    return d


def _spec(tmp_path: Path, **extra) -> Path:
    return write_spec(tmp_path, name="clean", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}],
                      **extra)


def test_uncommitted_changes_lists_modified_tracked_files(repo):
    assert provenance.uncommitted_changes() == []
    (repo / "untracked.txt").write_text("ignored: untracked files do not change the commit's code")
    assert provenance.uncommitted_changes() == []
    (repo / "code.py").write_text("x = 2\n")
    assert provenance.uncommitted_changes() == [" M code.py"]


@pytest.mark.parametrize("how", ["flag", "spec"])
def test_require_clean_refuses_a_dirty_tree_and_creates_nothing(repo, tmp_path, how):
    (repo / "code.py").write_text("x = 2\n")
    spec = _spec(tmp_path, **({"require_clean": True} if how == "spec" else {}))
    result = runner.invoke(app, ["run", str(spec), *(["--require-clean"] if how == "flag" else [])])
    assert result.exit_code == 2, result.output
    assert "not a clean git commit" in result.output and "code.py" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "results").exists()


def test_a_dirty_tree_warns_loudly_before_anything_else(repo, tmp_path):
    (repo / "code.py").write_text("x = 2\n")
    # An unreachable tracking server stops the run right after the tree check: nothing trains.
    result = runner.invoke(app, ["run", str(_spec(tmp_path)), "--tracking-uri", "http://127.0.0.1:1"])
    assert result.exit_code == 2
    assert "warning: the code in" in result.output and "+dirty" in result.output
    assert result.output.index("warning") < result.output.index("not reachable")


def test_a_clean_tree_passes_silently(repo, tmp_path):
    result = runner.invoke(app, ["run", str(_spec(tmp_path, require_clean=True)), "--tracking-uri",
                                 "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "not reachable" in result.output  # got past the tree check
    assert "clean git commit" not in result.output
