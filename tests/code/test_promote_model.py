"""Promotion: the rule (pure) and the registry moves it makes (a real MLflow store): first
model, better, worse, tie, guard, manual rollback, and the history of every decision."""

from __future__ import annotations

import contextlib

import pytest

from components import registry
from components.errors import BusiError
from components.promote_model import PromotionRule, decide, promote, promote_by_hand

RULE = PromotionRule(min_gain=0.01, max_guard_drop=0.0)
BASE = {"macro_f1": 0.70, "lesion_dice": 0.69, "malignant_recall": 0.78}


def test_first_model_is_promoted():
    d = decide(BASE, None, RULE)
    assert d.promote and d.outcome == "first_model"


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


# -- against a real MLflow store ------------------------------------------------------


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BUSI_TRACKING", "on")
    monkeypatch.chdir(tmp_path)
    return uri


def fake_register(uri: str, figures: dict, split: str = "s1") -> int:
    """What register_model leaves in the registry, without training models: one version of
    each model, tagged alike, the pipeline version linked to its parts, alias challenger."""
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
    assert champion(store) == v2 and champion(store, registry.UNET_MODEL) == 2

    fake_register(store, {**BASE, "macro_f1": 0.60})  # worse
    assert promote(RULE).outcome == "rejected"
    assert champion(store) == v2

    fake_register(store, {**BASE, "macro_f1": 0.75})  # a tie with v2
    d = promote(RULE)
    assert d.outcome == "rejected" and "not better" in d.reason
    assert champion(store) == v2

    rollback = promote_by_hand(v1)
    assert rollback.outcome == "rolled_back"
    assert champion(store) == v1 and champion(store, registry.UNET_MODEL) == 1

    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=store, registry_uri=store)
    history = registry.promotion_history(c)
    outcomes = [h["outcome"] for h in reversed(history)]
    assert outcomes == ["first_model", "promoted", "rejected", "rejected", "rolled_back"]
    assert history[0]["champion_before"] == str(v2) and history[0]["champion_after"] == str(v1)
    # The decision is on the version too, and the figures compared are in the history.
    tags = c.get_model_version(registry.PIPELINE_MODEL, "3").tags
    assert tags["promotion.outcome"] == "rejected"
    assert history[2]["metrics"]["candidate.macro_f1"] == pytest.approx(0.60)
    assert history[2]["metrics"]["champion.macro_f1"] == pytest.approx(0.75)


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
    assert d.outcome == "rejected" and "different test splits" in d.reason
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
