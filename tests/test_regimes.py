"""The report groups trials by the regime they trained into (measured rho), not their sigma label."""
import math

import pandas as pd

from orchestrator.report import regimes


def _trial(trial_id: str, sigma_regime: str, rho: float, learned: bool, ood_acc: float) -> list[dict]:
    common = {"status_ok": True, "halting": "trained", "task_label": "prefix_sums", "trial_id": trial_id,
              "variant_label": f"recall=standard, outer_norm=rms, spectral={sigma_regime}", "regime": sigma_regime,
              "learned": learned, "n": 256}
    return [{**common, "split": "id", "size": 16, "spectral_radius": rho, "exact_acc": 1.0 if learned else 0.2},
            {**common, "split": "ood_32", "size": 32, "spectral_radius": math.nan, "exact_acc": 0.5},
            {**common, "split": "ood_64", "size": 64, "spectral_radius": math.nan, "exact_acc": ood_acc}]


def test_trials_group_by_measured_rho_whatever_their_label():
    rows = (_trial("a", "expansive", 0.40, True, 0.90) + _trial("b", "contractive", 0.50, True, 0.80)
            + _trial("c", "critical", 0.45, True, 0.85) + _trial("d", "contractive", 1.30, False, 0.0)
            + _trial("e", "contractive", math.nan, True, 0.7))
    tables, estimates = regimes.regime_tables(pd.DataFrame(rows))
    body = {line[1]: line for line in tables["prefix_sums"]}
    assert set(body) == {"contractive", "expansive", "unmeasured"}
    contractive = body["contractive"]
    assert contractive[0] == "recall=standard, outer_norm=rms"  # the sigma label is not part of the arm
    assert contractive[4] == "3/3" and contractive[5] == "ood_64"  # three labels, one measured regime
    assert "expansive 1" in contractive[3] and "critical 1" in contractive[3] and "contractive 1" in contractive[3]
    assert body["expansive"][4] == "0/1" and body["expansive"][2] == "1.30"
    est = {r["variant"]: r for r in estimates}["recall=standard, outer_norm=rms, measured=contractive"]
    assert abs(est["estimate"] - 0.85) < 0.005 and est["lo"] < 0.85 < est["hi"] and est["n_learned"] == 3


def test_other_protocols_rows_do_not_count_twice():
    rows = _trial("a", "contractive", 0.4, True, 0.9)
    rows += [{**r, "halting": "long", "spectral_radius": 3.0} for r in rows]
    trials = regimes.trial_regimes(pd.DataFrame(rows))
    assert len(trials) == 1 and trials.iloc[0]["rho"] == 0.4


def test_measured_regime_bins_follow_the_label_rule():
    assert [regimes.measured_regime(r) for r in (0.5, 0.97, 1.0, 1.2, math.nan)] == [
        "contractive", "critical", "critical", "expansive", "unmeasured"]
