"""What the MLflow runs say about themselves: descriptions in words, source tags, dataset records
and the sweep's summary metrics, computed from real trials and rows."""
import json

from orchestrator.store.run_info import dataset_records, source_tags, sweep_summary, trial_description
from orchestrator.sweep.expand import expand
from orchestrator.sweep.spec import load_spec

from conftest import write_spec


def _trials(tmp_path):
    path = write_spec(tmp_path, name="info", tasks=[{"name": "prefix_sums", "train_size": 8, "ood_sizes": [16, 32]}],
                      axes={"model.recall": ["none", "standard"]})
    from orchestrator.sweep.expand import resolve
    return [resolve(c) for c in expand(load_spec(path))]


def test_trial_description_says_the_variant_in_words(tmp_path):
    text = trial_description(_trials(tmp_path)[1])
    assert text.startswith("prefix_sums trained at size 8, evaluated at 8 (id) and 16, 32 (OOD); "
                           "model.recall = standard; seed 0.")


def test_dataset_records_carry_generation_facts(tmp_path):
    trial = _trials(tmp_path)[0]
    c = trial.cell
    recs = dataset_records(c.task, c.task_params, c.seed,
                           [{"split": "train", "size": 8, "n": 64, "digest": "a" * 32, "generator_version": "1"},
                            {"split": "ood_16", "size": 16, "n": 8, "digest": "b" * 32, "generator_version": "1"}])
    assert [(r.name, r.context) for r in recs] == [("prefix_sums/train", "training"),
                                                   ("prefix_sums/ood_16", "evaluation")]
    facts = json.loads(recs[1].profile)
    assert facts == {"task": "prefix_sums", "params": {}, "split": "ood_16", "size": 16, "instances": 8,
                     "seed": 0, "generator": "fpr_core.tasks.prefix_sums", "generator_version": "1",
                     "content_hash": "b" * 32}


def test_source_tags_use_a_bare_commit():
    tags = source_tags("0123abcd+dirty", "fpr-sweep run sweeps/quickstart.yaml")
    assert tags["mlflow.source.git.commit"] == "0123abcd" and tags["mlflow.source.type"] == "LOCAL"
    assert tags["mlflow.source.name"] == "fpr-sweep run sweeps/quickstart.yaml" and tags["mlflow.user"]
    assert "mlflow.source.git.commit" not in source_tags("unknown")


def test_sweep_summary_counts_and_best_variant():
    def row(tid, variant, split, size, acc, status="ok", task="mazes"):
        return {"trial_id": tid, "variant": variant, "split": split, "size": size, "exact_acc": acc,
                "status": status, "task": task}
    rows = [row("a", "v1", "id", 9, 1.0), row("a", "v1", "ood_17", 17, 0.2), row("b", "v1", "ood_17", 17, 0.4),
            row("c", "v2", "ood_13", 13, 0.9), row("c", "v2", "ood_17", 17, 0.25),
            row("d", "v2", "ood_17", 17, None, "failed")]
    metrics, tags = sweep_summary(rows)
    assert metrics["trials/ok"] == 3 and metrics["trials/failed"] == 1 and metrics["trials/total"] == 4
    assert abs(metrics["best_ood_acc/mazes"] - 0.3) < 1e-12 and tags["best_variant/mazes"] == "v1 (size 17)"
