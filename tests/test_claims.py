"""The claims scorecard: intervals against independent computations, verdict rules, and the report/command."""
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tfgeom.report import claims
from tfgeom.runtime import statistics as st
from tfgeom.cli.main import app


def test_fraction_interval_matches_the_normal_approximation():
    """A bootstrap 95% interval of a fraction is close to p +- 1.96 sqrt(p(1-p)/n) for n = 400."""
    values = np.random.default_rng(0).random(400) < 0.7
    est = st.interval(values)
    p = values.mean()
    half = 1.96 * np.sqrt(p * (1 - p) / len(values))
    assert est.value == pytest.approx(p) and est.n == 400
    assert est.low == pytest.approx(p - half, abs=0.01) and est.high == pytest.approx(p + half, abs=0.01)


def test_auc_and_rank_correlation_equal_scikit_learn_and_scipy():
    from scipy.stats import spearmanr
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(1)
    neg, pos = g.normal(size=50), g.normal(0.8, size=40)
    assert st.auc(neg, pos) == pytest.approx(roc_auc_score(np.r_[np.zeros(50), np.ones(40)], np.r_[neg, pos]))
    est = st.auc_interval(neg, pos)
    assert est.low < est.value < est.high and est.n == 90
    a = g.normal(size=60)
    b = a + g.normal(size=60)
    corr = st.paired_interval(a, b, st.rank_correlation)
    assert corr.value == pytest.approx(spearmanr(a, b).statistic) and corr.low < corr.value < corr.high


def test_verdicts_read_the_interval():
    above, straddle, below = st.Estimate(0.8, 0.7, 0.9, 50), st.Estimate(0.5, 0.4, 0.6, 50), st.Estimate(0.2, 0.1, 0.3, 50)
    c = st.Criterion(">", 0.5)
    assert [st.verdict(e, c) for e in (above, straddle, below)] == [st.HOLDS, st.INCONCLUSIVE, st.FAILS]
    assert st.verdict(below, st.Criterion("<", 0.5)) == st.HOLDS
    assert st.verdict(st.Estimate(0.8, 0.7, 0.9, 5), c) == st.INCONCLUSIVE  # too few examples
    assert st.all_of([st.HOLDS, st.INCONCLUSIVE]) == st.INCONCLUSIVE and st.all_of([st.HOLDS, st.FAILS]) == st.FAILS


def test_scorecard_from_evidence():
    """Known evidence gives the expected verdicts; connectivity is never refuted; missing sections are inconclusive."""
    g = np.random.default_rng(2)
    sections = {
        "connectivity": {"evidence": {"natural_connected": [True] * 40, "adversarial_connected": [False] * 30}},
        "curvature": {"evidence": {"flat_fraction_all": list(0.3 + 0.05 * g.random(30)),
                                   "negative_mass": list(g.random(30) + 1),
                                   "positive_mass": list(g.random(30)), "shared_overlap_over_random": [1.0] * 30}},
        "detection": {"evidence": {"deepfool-l2": {"scores_clean": list(g.normal(size=60)),
                                                   "scores_perturbed": list(g.normal(size=60)),
                                                   "recovered": [True, False] * 20}}},
    }
    cards = {c["key"]: c for c in claims.scorecard(sections)}
    assert [c["key"] for c in claims.scorecard(sections)] == [c.key for c in claims.CLAIMS]
    assert cards["regions_connected"]["verdict"] == st.HOLDS
    assert cards["adversarial_regions_connected"]["verdict"] == st.INCONCLUSIVE  # not shown, never disconnected
    assert cards["boundary_flat"]["verdict"] == st.FAILS  # the whole spectrum: about 30% flat, decided
    sections["curvature"]["evidence"]["flat_fraction_all"] = list(0.9 + 0.05 * g.random(30))
    assert {c["key"]: c for c in claims.scorecard(sections)}["boundary_flat"]["verdict"] == st.HOLDS
    assert cards["more_negative_curvature"]["verdict"] == st.HOLDS
    assert cards["curved_directions_shared"]["verdict"] == st.FAILS  # exactly random overlap: not shared
    assert cards["curvature_detects_perturbations"]["verdict"] == st.FAILS  # AUC of two equal distributions
    assert cards["curvature_detects_perturbations"]["high"] < 0.9
    assert cards["test_outside_training_hull_pixel"]["verdict"] == st.INCONCLUSIVE  # no feature_space section
    assert cards["test_outside_training_hull_pixel"]["examples"] == 0


def test_shared_direction_score_by_construction():
    """Identical directions score d; independent random directions score about 1."""
    from tfgeom.geometry.curvature import Curvatures

    d, m = 200, 40
    g = np.random.default_rng(3)
    same = np.tile(g.normal(size=(1, 1, d)), (m, 2, 1))
    values = np.tile([[-2.0, 1.0]], (m, 1))
    from tfgeom.geometry.curvature import shared_direction_score

    assert np.allclose(shared_direction_score(Curvatures(np.arange(m), values, same, np.ones(m), "exact", None, 2)), d)
    rand = g.normal(size=(m, 2, d))
    assert 0.6 < np.median(shared_direction_score(Curvatures(np.arange(m), values, rand, np.ones(m), "exact", None, 2))) < 1.5


def test_claims_command_and_report_scorecard(small_cnn_path, digits_npz, tmp_path):
    """`tfgeom claims --json` runs the analyses and prints every claim with a verdict and an interval; report.json
    holds the same scorecard and report.html shows it first."""
    out = tmp_path / "claims"
    result = CliRunner().invoke(app, ["claims", str(small_cnn_path), "--data", str(digits_npz), "--limit", 60,
                                      "--out", str(out), "--json", "--set", "curvature.points=20",
                                      "--set", "connectivity.pairs=12", "--set", "connectivity.adversarial_pairs=12",
                                      "--set", "subspace.fit=10", "--set", "subspace.evaluate=40",
                                      "--set", "detection.calibration=30", "--set", "detection.evaluation=30",
                                      "--set", "feature_space.max_train=300"])
    assert result.exit_code == 0, result.output
    cards = json.loads(result.stdout)
    assert [c["key"] for c in cards] == [c.key for c in claims.CLAIMS]
    for card in cards:
        assert card["verdict"] in (st.HOLDS, st.FAILS, st.INCONCLUSIVE)
        if card["examples"] >= st.MIN_EXAMPLES:
            assert card["low"] <= card["value"] <= card["high"], card
    report = json.loads((out / "report.json").read_text())
    assert report["claims"] == cards
    for claim in claims.CLAIMS:  # a claim's `sections` (what --until-decided grows) hold all of its evidence
        assert set(claim.sections) <= set(claims.SECTIONS)
        assert claim.evidence({name: report["sections"][name] for name in claim.sections}) is not None, claim.key
        others = {name: s for name, s in report["sections"].items() if name not in claim.sections}
        assert claim.evidence(others) is None, claim.key
    html = (out / "report.html").read_text()
    assert html.index("claims on this model") < html.index("<h2>Model</h2>")


def test_examples_needed_makes_an_inconclusive_claim_decided():
    """An inconclusive fraction gets a number of examples; the same evidence repeated to that many examples
    (same estimate, interval shrunk as 1/sqrt(n)) is decided; a decided estimate needs what it has; an estimate on
    the criterion can never be decided."""
    criterion = st.Criterion(">", 0.5)
    values = np.r_[np.ones(23), np.zeros(17)]  # 0.575 over 40: the interval straddles 0.5
    estimate = st.interval(values)
    assert st.verdict(estimate, criterion) == st.INCONCLUSIVE
    needed = st.examples_needed(estimate, criterion)
    assert needed > 40
    repeated = st.interval(np.tile(values, int(np.ceil(1.5 * needed / 40))))
    assert st.verdict(repeated, criterion) == st.HOLDS
    fewer = st.interval(np.tile(values, max(1, int(needed / 40 / 3))))
    assert st.verdict(fewer, criterion) == st.INCONCLUSIVE
    assert st.examples_needed(repeated, criterion) == repeated.n
    assert st.examples_needed(st.interval(np.r_[np.ones(20), np.zeros(20)]), criterion) is None



def test_until_decided_grows_the_undecided_claims_sections_and_reuses_work(small_cnn_path, digits_npz, tmp_path,
                                                                           monkeypatch):
    """`claims --until-decided`: each round doubles the example counts behind the claims still undecided (capped at
    --max-inputs), keeps every other section as it was, never recomputes a per-example shard it already has, and
    stops with a reason; report.json records the rounds."""
    from tfgeom.execution.store import ShardStore

    saved_again, loaded = [], []
    save, load = ShardStore.save, ShardStore.load

    def saving(store, name, rows, key, result):
        saved_again.append(store.path(name, rows, key).exists())  # computed although the store had it
        return save(store, name, rows, key, result)

    def loading(store, name, rows, key):
        found = load(store, name, rows, key)
        loaded.append(found is not None)
        return found

    monkeypatch.setattr(ShardStore, "save", saving)
    monkeypatch.setattr(ShardStore, "load", loading)
    out = tmp_path / "rounds"
    start = {"curvature.points": 6, "connectivity.pairs": 6, "connectivity.adversarial_pairs": 4, "subspace.fit": 6,
             "subspace.evaluate": 10, "detection.calibration": 10, "detection.evaluation": 10,
             "feature_space.max_train": 300}
    result = CliRunner().invoke(app, ["claims", str(small_cnn_path), "--data", str(digits_npz), "--max-inputs", 60,
                                      "--until-decided", "--out", str(out), "--json"]
                                + [a for k, v in start.items() for a in ("--set", f"{k}={v}")])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rounds = report["rounds"]
    assert len(rounds) >= 2 and rounds[-1]["stop"] and not any(r["stop"] for r in rounds[:-1])
    assert "round 1:" in result.stderr and "stopped:" in result.stderr
    by_key = {c.key: c for c in claims.CLAIMS}
    for before, after in zip(rounds, rounds[1:]):
        assert before["grown"]
        for key, value in before["grown"].items():
            assert value == min(2 * before["counts"][key], 60) > before["counts"][key]
            assert any(key.split(".")[0] in by_key[k].sections for k in before["undecided"])
        assert after["counts"] == {**before["counts"], **before["grown"]}  # nothing else changed
    assert json.loads(result.stdout) == report["claims"]
    assert saved_again and not any(saved_again)  # no shard computed twice
    assert sum(loaded) > 0  # later rounds read finished shards back (DeepFool of the inputs, unchanged stages)
    grown_sections = {k.split(".")[0] for r in rounds for k in r["grown"]}
    assert "feature_space" not in grown_sections  # its examples are the inputs loaded, from the first round on
