"""promote_model: decide whether the challenger becomes the champion, and move the alias.

The rule (``params.yaml: promote_model``) compares the challenger with the current
champion on the same frozen test split, using the figures each version carries as tags:

- the first model becomes champion;
- the challenger must not lose more than ``max_guard_drop`` on ``guard`` (malignant
  recall: a missed cancer costs most);
- and it must beat the champion by at least ``min_gain`` on ``primary`` (macro-F1), or on
  ``secondary`` (lesion Dice) while not being worse on ``primary``;
- anything else (a tie included) keeps the champion.

Every decision is recorded as tags on the challenger's version (``promotion.*``) and as a
run in the experiment ``busi-promotions`` (the history, which survives alias moves).
``busi promote-model --version N`` makes version N the champion by hand: a promotion or a
rollback, recorded the same way. Moving the ``champion`` alias in the MLflow UI has the
same effect on serving, which always loads ``models:/busi-pipeline@champion``.

Core: ``PromotionRule`` and ``decide`` (pure). Shell: ``promote``, ``promote_by_hand``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass

from components import registry
from components.config import load_section
from components.errors import BusiError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionRule:
    primary: str = "macro_f1"
    secondary: str = "lesion_dice"
    min_gain: float = 0.01
    guard: str = "malignant_recall"
    max_guard_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.min_gain < 0 or self.max_guard_drop < 0:
            raise ValueError("min_gain and max_guard_drop must be >= 0")


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str  # first_model | promoted | rejected | already_champion
    reason: str


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, rule: PromotionRule
) -> Decision:
    """Whether figures ``challenger`` should replace ``champion`` (None: there is none)."""
    if champion is None:
        return Decision(True, "first_model", "there is no champion yet")
    for name in {rule.primary, rule.secondary, rule.guard}:
        for who, figures in (("challenger", challenger), ("champion", champion)):
            if name not in figures:
                return Decision(False, "rejected", f"the {who} has no figure '{name}' to compare")
    guard_drop = champion[rule.guard] - challenger[rule.guard]
    if guard_drop > rule.max_guard_drop + 1e-12:
        return Decision(
            False,
            "rejected",
            f"{rule.guard} falls from {champion[rule.guard]:.3f} to "
            f"{challenger[rule.guard]:.3f} (allowed drop {rule.max_guard_drop:.3f})",
        )
    gain = challenger[rule.primary] - champion[rule.primary]
    if gain >= rule.min_gain - 1e-12:
        return Decision(
            True,
            "promoted",
            f"{rule.primary} {champion[rule.primary]:.3f} -> {challenger[rule.primary]:.3f} "
            f"(+{gain:.3f} >= {rule.min_gain:.3f})",
        )
    gain2 = challenger[rule.secondary] - champion[rule.secondary]
    if gain2 >= rule.min_gain - 1e-12 and gain >= 0:
        return Decision(
            True,
            "promoted",
            f"{rule.secondary} {champion[rule.secondary]:.3f} -> "
            f"{challenger[rule.secondary]:.3f} (+{gain2:.3f}) with {rule.primary} not worse",
        )
    return Decision(
        False,
        "rejected",
        f"not better by {rule.min_gain:.3f}: {rule.primary} {gain:+.3f}, "
        f"{rule.secondary} {gain2:+.3f}",
    )


def _record(
    c, challenger: registry.VersionInfo, champion_before, champion_after, decision, rule, by
):
    """Tags on the challenger's version and a run in the promotions history."""
    import mlflow

    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    name = registry.PIPELINE_MODEL
    for key, value in {
        "promotion.outcome": decision.outcome,
        "promotion.reason": decision.reason,
        "promotion.time": stamp,
        "promotion.by": by,
        "promotion.compared_with": str(champion_before.version) if champion_before else "none",
    }.items():
        c.set_model_version_tag(name, str(challenger.version), key, value)
    exp = c.get_experiment_by_name(registry.PROMOTIONS_EXPERIMENT)
    exp_id = exp.experiment_id if exp else c.create_experiment(registry.PROMOTIONS_EXPERIMENT)
    run = c.create_run(
        exp_id,
        run_name=f"{decision.outcome}-v{challenger.version}",
        tags={
            "outcome": decision.outcome,
            "promoted": str(decision.promote).lower(),
            "reason": decision.reason,
            "by": by,
            "version": str(challenger.version),
            "champion_before": str(champion_before.version) if champion_before else "none",
            "champion_after": str(champion_after.version) if champion_after else "none",
            "rule": json.dumps(asdict(rule)),
            "pipeline_run_id": os.environ.get("BUSI_PARENT_RUN_ID", ""),
        },
    )
    figures = {f"candidate.{k}": v for k, v in challenger.metrics().items()}
    if champion_before is not None:
        figures |= {f"champion.{k}": v for k, v in champion_before.metrics().items()}
    for key, value in figures.items():
        c.log_metric(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id, "FINISHED")
    if mlflow.active_run() is not None:
        mlflow.set_tags(
            {"promotion.outcome": decision.outcome, "promotion.reason": decision.reason}
        )


def promote(rule: PromotionRule, tracking_uri: str | None = None) -> Decision:
    """Compare the challenger with the champion and move ``champion`` if the rule says so."""
    c = registry.client(tracking_uri)
    challenger = registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHALLENGER)
    if challenger is None:
        raise BusiError(
            f"no '{registry.CHALLENGER}' version of {registry.PIPELINE_MODEL}: "
            "run `busi register-model` first"
        )
    champion = registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return Decision(False, "already_champion", f"v{challenger.version} is the champion")
    if champion is not None and champion.tags.get("test_split_md5") != challenger.tags.get(
        "test_split_md5"
    ):
        decision = Decision(
            False,
            "rejected",
            "champion and challenger were scored on different test splits, so their "
            "figures cannot be compared; promote by hand (`busi promote-model --version N`) "
            "after checking both",
        )
    else:
        decision = decide(challenger.metrics(), champion.metrics() if champion else None, rule)
    from components import tracking

    with tracking.step_run("promote_model", asdict(rule)):
        if decision.promote:
            registry.set_alias_all(c, registry.CHAMPION, challenger)
        after = challenger if decision.promote else champion
        _record(c, challenger, champion, after, decision, rule, by="rule")
    return decision


def promote_by_hand(version: int, tracking_uri: str | None = None) -> Decision:
    """Make ``version`` the champion (a promotion, or a rollback to an older version)."""
    c = registry.client(tracking_uri)
    try:
        target = registry.version_info(c, registry.PIPELINE_MODEL, version)
    except Exception as exc:
        raise BusiError(
            f"{registry.PIPELINE_MODEL} has no version {version}: see the registry in the "
            "MLflow UI or `busi promote-model --history`"
        ) from exc
    champion = registry.alias_version(c, registry.PIPELINE_MODEL, registry.CHAMPION)
    if champion is not None and champion.version == version:
        return Decision(False, "already_champion", f"v{version} is already the champion")
    older = champion is not None and version < champion.version
    decision = Decision(
        True,
        "rolled_back" if older else "promoted_by_hand",
        f"by hand: champion v{champion.version if champion else 'none'} -> v{version}",
    )
    registry.set_alias_all(c, registry.CHAMPION, target)
    _record(c, target, champion, target, decision, PromotionRule(), by="hand")
    return decision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="busi promote-model", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--version", type=int, default=None, help="make this version champion by hand"
    )
    parser.add_argument("--history", action="store_true", help="print the promotion history")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    if args.history:
        c = registry.client(args.tracking_uri)
        for entry in registry.promotion_history(c):
            when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry["time"] / 1000))
            print(
                f"{when}  v{entry.get('version')}  {entry.get('outcome'):<17} champion "
                f"{entry.get('champion_before')} -> {entry.get('champion_after')}  "
                f"{entry.get('reason')}"
            )
        return 0
    if args.version is not None:
        decision = promote_by_hand(args.version, args.tracking_uri)
    else:
        rule = load_section(args.params, "promote_model", PromotionRule)
        decision = promote(rule, args.tracking_uri)
    print(f"{decision.outcome}: {decision.reason}")
    return 0
