"""Promotion: the rule (pure) and the registry moves it makes (a real MLflow store): first
model, better, worse, tie, guard, manual rollback, and the history of every decision."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pandas as pd
import pytest

from busi import registry
from busi.data.synthetic import synthetic_predictions
from busi.errors import BusiError
from components.promote_model import (
    EXTERNAL_FIGURES,
    PromotionRule,
    decide,
    decide_paired,
    external_check,
    external_pairs,
    promote,
    promote_by_hand,
)

RULE = PromotionRule(min_gain=0.01, max_guard_drop=0.0)
BASE = {"macro_f1": 0.70, "lesion_dice": 0.69, "malignant_recall": 0.78}


def test_first_model_is_promoted():
    d = decide(BASE, None, RULE)
    assert d.promote
    assert d.outcome == "first_model"


@pytest.mark.parametrize(
    ("change", "promoted"),
    [
        ({"macro_f1": 0.72}, True),  # better on the primary figure by the margin
        ({"macro_f1": 0.705}, False),  # better, but by less than the margin
        ({}, False),  # a tie keeps the champion
        ({"macro_f1": 0.60}, False),  # worse
        ({"lesion_dice": 0.75}, True),  # better segmentation, classification not worse
        ({"lesion_dice": 0.75, "macro_f1": 0.69}, False),  # ... but classification worse
        ({"macro_f1": 0.80, "malignant_recall": 0.70}, False),  # the guard: recall fell
    ],
)
def test_rule(change, promoted):
    d = decide({**BASE, **change}, BASE, RULE)
    assert d.promote is promoted, d.reason
    assert d.reason


def test_missing_figure_is_rejected_with_a_reason():
    d = decide({"macro_f1": 0.9}, BASE, RULE)
    assert not d.promote
    assert "lesion_dice" in d.reason or "malignant_recall" in d.reason


def test_rule_validates_its_settings():
    with pytest.raises(ValueError):
        PromotionRule(min_gain=-0.1)


# -- the paired rule ------------------------------------------------------------------

PAIRED = PromotionRule(probability=0.9, max_guard_drop=0.0, bootstrap_samples=1000)


def _set_prediction(table: pd.DataFrame, rows, correct: bool) -> pd.DataFrame:
    """The same model with other answers on ``rows``: right (the true class) or wrong."""
    table = table.copy()
    for i in rows:
        label = table.at[i, "class"]
        classes = ["benign", "malignant", "normal"]
        pred = label if correct else classes[(classes.index(label) + 1) % 3]
        for c in classes:
            table.at[i, f"prob_{c}"] = 0.8 if c == pred else 0.1
        table.at[i, "predicted"] = pred
    return table


def _rows(table, correct: bool, label=None, exclude=()) -> list[int]:
    right = table["predicted"] == table["class"]
    keep = right if correct else ~right
    if label is not None:
        keep &= table["class"] == label
    return [i for i in table.index[keep] if i not in exclude]


@pytest.fixture(scope="module")
def champion_table():
    return synthetic_predictions(n_groups=120, accuracy=0.72, seed=11)


def test_the_champion_retrained_with_another_seed_is_not_promoted(champion_table):
    # Another seed: the same images right and wrong up to noise: a few flip either way
    # (malignant ones left alone, so only the primary figure is at stake), and the
    # point macro-F1 may even be a little higher.
    rng = np.random.default_rng(0)
    fixed = rng.choice(_rows(champion_table, False, "benign"), 3, replace=False)
    broken = rng.choice(_rows(champion_table, True, "normal"), 2, replace=False)
    seed2 = _set_prediction(_set_prediction(champion_table, fixed, True), broken, False)
    d = decide_paired(seed2, champion_table, PAIRED)
    assert d.differences["macro_f1"]["value"] > 0  # the old point rule would look at this
    assert not d.promote, d.reason
    assert d.outcome == "rejected", d.reason
    assert "not better" in d.reason
    gain = d.differences["macro_f1"]
    assert gain["low"] < 0 < gain["high"]
    assert gain["p"] < 0.9


def test_a_clearly_better_challenger_is_promoted(champion_table):
    wrong = _rows(champion_table, False)
    better = _set_prediction(champion_table, wrong[: len(wrong) * 2 // 3], True)
    d = decide_paired(better, champion_table, PAIRED)
    assert d.promote, d.reason
    assert d.outcome == "promoted", d.reason
    assert d.differences["macro_f1"]["low"] > 0
    assert d.differences["macro_f1"]["p"] >= 0.9
    assert d.differences["malignant_recall"]["value"] >= 0


def test_a_gain_within_the_retraining_noise_is_not_promoted(champion_table):
    # Eight benign images fixed: on the test images alone the gain is sure (P > 0.9), but
    # two seeds of the same settings differ by more than that (params.yaml: primary_seed_sd).
    fixed = _rows(champion_table, False, "benign")[:8]
    challenger = _set_prediction(champion_table, fixed, True)
    assert decide_paired(challenger, champion_table, PAIRED).promote
    noisy = PromotionRule(probability=0.9, bootstrap_samples=1000, primary_seed_sd=0.06)
    d = decide_paired(challenger, champion_table, noisy)
    assert not d.promote, d.reason
    assert "not better" in d.reason
    assert "retraining noise" in d.reason
    assert d.differences["macro_f1"]["p"] < 0.9
    assert d.differences["macro_f1"]["seed_sd"] == 0.06
    # Far better than a reseed: promoted all the same.
    wrong = _rows(champion_table, False)
    better = _set_prediction(champion_table, wrong, True)
    assert decide_paired(better, champion_table, noisy).promote


def test_the_promotion_rule_in_params_counts_retraining_noise():
    from busi.config import load_section
    from tests.conftest import REPO_ROOT

    rule = load_section(REPO_ROOT / "params.yaml", "promote_model", PromotionRule)
    assert rule.primary_seed_sd > 0
    with pytest.raises(ValueError, match="seed_sd"):
        PromotionRule(primary_seed_sd=-0.1)


def test_the_guard_blocks_a_drop_in_malignant_recall(champion_table):
    # Far better on benign and normal images, but four cancers the champion found are missed.
    wrong = [
        i for i in _rows(champion_table, False) if champion_table.at[i, "class"] != "malignant"
    ]
    better = _set_prediction(champion_table, wrong, True)
    missed = _rows(champion_table, True, "malignant")[:4]
    worse = _set_prediction(better, missed, False)
    d = decide_paired(worse, champion_table, PAIRED)
    assert d.differences["macro_f1"]["value"] > 0.1  # far better on the primary figure
    assert not d.promote, d.reason
    assert d.reason.startswith("guard"), d.reason
    assert d.differences["malignant_recall"]["high"] <= 0


def test_an_external_set_joins_the_guard(champion_table):
    better = _set_prediction(champion_table, _rows(champion_table, False), True)
    same = {"site-b": {"malignant_recall": (0.80, 0.80)}}
    assert decide_paired(better, champion_table, PAIRED, same).promote
    d = decide_paired(
        better, champion_table, PAIRED, {"site-b": {"malignant_recall": (0.70, 0.80)}}
    )
    assert not d.promote
    assert d.reason.startswith("guard on the external set: malignant_recall 0.800 -> 0.700")
    assert "on site-b" in d.reason
    assert d.differences["external.site-b.malignant_recall"]["value"] == pytest.approx(-0.10)


GUARD = {"lesion_dice_mean": 0.02, "lesion_called_normal": 0.02, "malignant_recall": 0.0}


@pytest.mark.parametrize(
    ("figure", "new", "old", "holds"),
    [
        ("lesion_dice_mean", 0.59, 0.60, True),  # worse, within its margin
        ("lesion_dice_mean", 0.57, 0.60, False),  # worse by more
        ("lesion_called_normal", 0.31, 0.30, True),  # a rate that rises is worse: within
        ("lesion_called_normal", 0.33, 0.30, False),  # ... and past its margin
        ("lesion_called_normal", 0.10, 0.30, True),  # fewer called normal is better
        ("malignant_recall", 0.79, 0.80, False),  # no drop allowed
    ],
)
def test_the_external_guard_knows_which_way_each_figure_is_worse(figure, new, old, holds):
    rule = PromotionRule(external_guard=GUARD)
    failed, record = external_check({"bus_bra": {figure: (new, old)}}, rule)
    assert (failed is None) is holds, failed
    assert record[f"external.bus_bra.{figure}"]["value"] == pytest.approx(new - old)


def test_external_pairs_takes_the_sets_and_figures_both_versions_have():
    rule = PromotionRule(external_guard=GUARD)
    new = {"a": {"lesion_dice_mean": 0.6, "malignant_recall": 0.7, "malignant_auc": 0.8},
           "b": {"lesion_dice_mean": 0.5}}  # fmt: skip
    nan = float("nan")
    old = {"a": {"lesion_dice_mean": 0.7, "lesion_called_normal": 0.2, "malignant_recall": nan},
           "c": {}}  # fmt: skip
    # set b and c are scored for one version only; malignant_auc is not in the guard, and the
    # champion's malignant_recall is undefined (NaN)
    assert external_pairs(new, old, rule) == {"a": {"lesion_dice_mean": (0.6, 0.7)}}
    assert external_pairs(new, old, PromotionRule(external_guard={})) == {"a": {}}


def test_the_external_guard_is_checked_when_it_is_made():
    with pytest.raises(ValueError, match="unknown figures \\['dice'\\]"):
        PromotionRule(external_guard={"dice": 0.02})
    with pytest.raises(ValueError, match="numbers >= 0"):
        PromotionRule(external_guard={"lesion_dice_mean": -0.1})
    with pytest.raises(ValueError, match="or be \\{\\} to turn"):
        PromotionRule(external_guard=["lesion_dice_mean"])
    from busi.config import load_section
    from tests.conftest import REPO_ROOT

    rule = load_section(REPO_ROOT / "params.yaml", "promote_model", PromotionRule)
    assert rule.external_guard, "params.yaml's promotion guards external sets"
    assert set(rule.external_guard) <= set(EXTERNAL_FIGURES)


def test_the_point_rule_applies_the_external_guard_too():
    worse_outside = {"x": {"lesion_called_normal": (0.40, 0.30)}}
    rule = PromotionRule(external_guard=GUARD)
    better = {**BASE, "macro_f1": 0.80}
    assert decide(better, BASE, rule).promote
    d = decide(better, BASE, rule, worse_outside)
    assert not d.promote
    assert "lesion_called_normal 0.300 -> 0.400 on x" in d.reason
    # turned off, the external figures do not count
    assert decide(better, BASE, PromotionRule(external_guard={}), worse_outside).promote


def test_tables_without_common_images_are_not_compared(champion_table):
    other = champion_table.assign(id=champion_table["id"] + "x")
    d = decide_paired(other, champion_table, PAIRED)
    assert not d.promote
    assert "cannot be paired" in d.reason


# -- against a real MLflow store ------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BUSI_TRACKING", "on")
    monkeypatch.chdir(tmp_path)
    return uri


def fake_register(uri: str, figures: dict, split: str = "s1", table=None) -> int:
    """What register_model leaves in the registry, without training models: one version of
    each model, tagged alike, the pipeline version linked to its parts, alias challenger;
    with ``table``, its per-image predictions attached as register_model attaches them."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {}
    for name in (registry.UNET_MODEL, registry.CLASSIFIER_MODEL, registry.PIPELINE_MODEL):
        with contextlib.suppress(Exception):
            c.create_registered_model(name)
        mv = c.create_model_version(name, source="file:///dev/null")
        versions[name] = mv.version
        for key, value in figures.items():
            c.set_model_version_tag(name, mv.version, f"metric.{key}", str(value))
        c.set_model_version_tag(name, mv.version, "test_split_md5", split)
    pv = versions[registry.PIPELINE_MODEL]
    c.set_model_version_tag(
        registry.PIPELINE_MODEL, pv, "unet_version", versions[registry.UNET_MODEL]
    )
    c.set_model_version_tag(
        registry.PIPELINE_MODEL, pv, "classifier_version", versions[registry.CLASSIFIER_MODEL]
    )
    if table is not None:
        import tempfile
        from pathlib import Path

        exp = c.get_experiment_by_name("Default") or c.get_experiment("0")
        run = c.create_run(exp.experiment_id)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "per_image.csv"
            table.to_csv(path, index=False)
            c.log_artifact(run.info.run_id, str(path), "evaluation")
        uri_tag = f"runs:/{run.info.run_id}/evaluation/per_image.csv"
        c.set_model_version_tag(registry.PIPELINE_MODEL, pv, registry.PER_IMAGE_TAG, uri_tag)
    registry.set_alias_all(
        c, registry.CHALLENGER, registry.version_info(c, registry.PIPELINE_MODEL, pv)
    )
    return int(pv)


def champion(uri: str, name: str = registry.PIPELINE_MODEL) -> int | None:
    from mlflow import MlflowClient

    found = registry.alias_version(
        MlflowClient(tracking_uri=uri, registry_uri=uri), name, "champion"
    )
    return found.version if found else None


def test_promotion_sequence_and_history(store):
    v1 = fake_register(store, BASE)
    assert promote(RULE).outcome == "first_model"
    assert champion(store) == v1
    # The parts move with the pipeline model.
    assert champion(store, registry.UNET_MODEL) == 1
    assert champion(store, registry.CLASSIFIER_MODEL) == 1

    v2 = fake_register(store, {**BASE, "macro_f1": 0.75})
    assert promote(RULE).outcome == "promoted"
    assert champion(store) == v2
    assert champion(store, registry.UNET_MODEL) == 2

    fake_register(store, {**BASE, "macro_f1": 0.60})  # worse
    assert promote(RULE).outcome == "rejected"
    assert champion(store) == v2

    fake_register(store, {**BASE, "macro_f1": 0.75})  # a tie with v2
    d = promote(RULE)
    assert d.outcome == "rejected"
    assert "not better" in d.reason
    assert champion(store) == v2

    rollback = promote_by_hand(v1)
    assert rollback.outcome == "rolled_back"
    assert champion(store) == v1
    assert champion(store, registry.UNET_MODEL) == 1

    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=store, registry_uri=store)
    history = registry.promotion_history(c)
    outcomes = [h["outcome"] for h in reversed(history)]
    assert outcomes == ["first_model", "promoted", "rejected", "rejected", "rolled_back"]
    assert history[0]["champion_before"] == str(v2)
    assert history[0]["champion_after"] == str(v1)
    # The decision is on the version too, and the figures compared are in the history.
    tags = c.get_model_version(registry.PIPELINE_MODEL, "3").tags
    assert tags["promotion.outcome"] == "rejected"
    assert history[2]["metrics"]["candidate.macro_f1"] == pytest.approx(0.60)
    assert history[2]["metrics"]["champion.macro_f1"] == pytest.approx(0.75)


def test_paired_promotion_through_the_registry_and_the_fallback(store, champion_table):
    from mlflow import MlflowClient

    fake_register(store, BASE, table=champion_table)
    promote(PAIRED)
    better = _set_prediction(champion_table, _rows(champion_table, False), True)
    v2 = fake_register(store, {**BASE, "macro_f1": 0.9}, table=better)
    d = promote(PAIRED)
    assert d.outcome == "promoted", d.reason
    assert d.reason.startswith("P(macro_f1 gain > 0)"), d.reason
    assert champion(store) == v2
    c = MlflowClient(tracking_uri=store, registry_uri=store)
    tags = c.get_model_version(registry.PIPELINE_MODEL, str(v2)).tags
    recorded = json.loads(tags["promotion.diff.macro_f1"])
    assert recorded["low"] > 0
    assert recorded["p"] >= 0.9
    assert "promotion.diff.malignant_recall" in tags
    assert registry.promotion_history(c)[0]["metrics"]["diff.macro_f1.low"] > 0

    # An older version without per-image predictions: the point rule, and the reason says so.
    fake_register(store, {**BASE, "macro_f1": 0.95})
    d = promote(PAIRED)
    assert d.outcome == "promoted", d.reason
    assert d.reason.startswith("fallback to point figures"), d.reason
    assert "v3 registered without per-image predictions" in d.reason


def test_challenger_that_is_champion_changes_nothing(store):
    fake_register(store, BASE)
    promote(RULE)
    d = promote(RULE)
    assert d.outcome == "already_champion"


def test_different_test_splits_are_not_compared(store):
    fake_register(store, BASE, split="s1")
    promote(RULE)
    fake_register(store, {**BASE, "macro_f1": 0.9}, split="s2")
    d = promote(RULE)
    assert d.outcome == "rejected"
    assert "different test splits" in d.reason
    assert champion(store) == 1


def test_no_challenger_and_unknown_version_are_clear_errors(store):
    with pytest.raises(BusiError, match="register-model"):
        promote(RULE)
    fake_register(store, BASE)
    with pytest.raises(BusiError, match="no version 7"):
        promote_by_hand(7)


def test_unreachable_tracking_server_is_a_clear_error(monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BusiError, match="cannot be reached"):
        promote(RULE, tracking_uri=uri)


# -- the behavioural checks -------------------------------------------------------------


def test_a_challenger_failing_the_behavioural_checks_is_not_promoted(store):
    from components.promote_model import behaviour_gate

    failed = {registry.BEHAVIOUR_TAG: "failed: blank_image, drawn_lesion"}
    assert behaviour_gate({registry.BEHAVIOUR_TAG: "passed"}, RULE) is None
    assert behaviour_gate({}, RULE) is None  # registered before the checks existed
    assert behaviour_gate(failed, PromotionRule(require_behaviour=False)) is None
    v = fake_register(store, BASE)
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=store, registry_uri=store)
    c.set_model_version_tag(registry.PIPELINE_MODEL, str(v), *failed.popitem())
    d = promote(RULE, store)  # not even as the first model
    assert not d.promote
    assert "behavioural checks failed: blank_image" in d.reason
    assert champion(store) is None


def _tag_external(uri: str, version: int, figures: dict) -> None:
    """What evaluate_external leaves on a version: ``external.<set>.<figure>`` tags."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for key, value in figures.items():
        c.set_model_version_tag(
            registry.PIPELINE_MODEL, str(version), f"external.{key}", str(value)
        )


def test_the_external_guard_through_the_registry_paired_and_point(store, champion_table):
    """Far better on the test split, but more lesion images called normal on an external
    set both versions were scored on: kept out, by the paired rule and by the point rule."""
    rule = PromotionRule(probability=0.9, bootstrap_samples=500, external_guard=GUARD)
    v1 = fake_register(store, BASE, table=champion_table)
    _tag_external(store, v1, {"site_b.lesion_called_normal": 0.30, "site_b.n_images": 50})
    promote(rule)
    better = _set_prediction(champion_table, _rows(champion_table, False), True)
    v2 = fake_register(store, {**BASE, "macro_f1": 0.9}, table=better)
    _tag_external(store, v2, {"site_b.lesion_called_normal": 0.40})
    d = promote(rule)
    assert d.outcome == "rejected", d.reason
    assert "lesion_called_normal 0.300 -> 0.400 on site_b" in d.reason
    assert champion(store) == v1
    v3 = fake_register(store, {**BASE, "macro_f1": 0.95})  # no per-image table: point rule
    _tag_external(store, v3, {"site_b.lesion_called_normal": 0.45})
    d = promote(rule)
    assert d.reason.startswith("fallback to point figures"), d.reason
    assert "lesion_called_normal 0.300 -> 0.450" in d.reason
    assert champion(store) == v1
    v4 = fake_register(store, {**BASE, "macro_f1": 0.9}, table=better)
    _tag_external(store, v4, {"site_b.lesion_called_normal": 0.31})  # within the margin
    assert promote(rule).outcome == "promoted"
    assert champion(store) == v4
