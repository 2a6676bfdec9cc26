"""Seeds kept apart: a profile spec names the seeds its recipes were tuned on (tuning_seeds), and
validate warns when a study that confirms those recipes (confirms) reuses one."""
from __future__ import annotations

from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.sweep.plan import plan_sweep, reused_tuning_seeds

from conftest import write_spec

TASKS = [{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16]}]
runner = CliRunner()


def specs(tmp_path, study_seeds, confirms="profiles.yaml"):
    write_spec(tmp_path, name="profiles", tasks=TASKS, seeds=[0], tuning_seeds=[0, 1, 2])
    tasks = [dict(TASKS[0], seeds=[7])]  # a per-task seed list counts too
    return write_spec(tmp_path, name="study", tasks=tasks, seeds=study_seeds, confirms=confirms)


def test_a_study_reusing_tuning_seeds_is_warned_with_the_seeds(tmp_path):
    study = specs(tmp_path, [2, 5])
    assert "seeds [2] are tuning_seeds of profiles.yaml" in reused_tuning_seeds(plan_sweep(study))
    result = runner.invoke(app, ["validate", str(study)])
    assert result.exit_code == 0 and "warning" in result.output and "[2]" in result.output


def test_disjoint_seeds_pass_quietly(tmp_path):
    study = specs(tmp_path, [5, 6])
    assert reused_tuning_seeds(plan_sweep(study)) is None
    result = runner.invoke(app, ["validate", str(study)])
    assert result.exit_code == 0 and "warning" not in result.output


def test_a_missing_profile_is_refused_with_its_path(tmp_path):
    study = specs(tmp_path, [5], confirms="nowhere.yaml")
    result = runner.invoke(app, ["validate", str(study)])
    assert result.exit_code == 2 and "nowhere.yaml" in result.output



def test_the_shipped_study_confirms_the_profiles_on_other_seeds():
    plan = plan_sweep("sweeps/ood_generalization_cpu.yaml")
    assert plan.spec.confirms == "cpu_profiles.yaml" and reused_tuning_seeds(plan) is None
