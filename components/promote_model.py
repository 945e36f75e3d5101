"""promote_model: decide whether the challenger becomes the champion, and move the alias.

The rule (``params.yaml: promote_model``) is a paired comparison on the same frozen test
images: both versions' per-image predictions (kept by evaluate_models, attached at
registration) are resampled together, by near-duplicate group, ``bootstrap_samples`` times:

- the first model becomes champion;
- the guard (``guard``, malignant recall: a missed cancer costs most) must not fall by
  more than ``max_guard_drop`` with probability at least ``probability``;
- where both versions carry figures of an external evaluation (tags
  ``external.<set>.<figure>``, from evaluate_external), the challenger may be worse there
  than the champion by at most ``external_guard``'s margin for each figure named (a rate of
  missed lesions or of lesion images called normal is worse when it rises, the others when
  they fall); point figures, since there are no images to pair; ``external_guard: {}``
  turns this guard off;
- and the gain on ``primary`` (macro-F1) must be positive with probability at least
  ``probability`` (default 0.9);
- anything else keeps the champion: a retrained model that differs only by its seed is
  not better, whatever its point figure says.

The bootstrap only knows the test images' sampling noise. Two trainings of the same settings
that differ only in their seed differ by more than that on the real data (macro-F1 0.651
and 0.737, paired P(gain > 0) = 0.99 on 118 test images), so ``primary_seed_sd`` (the
standard deviation of the primary figure between seeds, measured) adds the retraining
noise: each bootstrap difference of the primary figure gets a draw of N(0, 2 sd^2), the
difference of two seeds' effects, and a challenger has to beat the champion by more than a
reseed does. The guard stays a question about the two models themselves (does the new one
miss more cancers on these images?): retraining noise there would stop any challenger
whose recall is merely equal.

Before any comparison, with ``require_behaviour`` (default), a challenger whose behavioural
checks failed in evaluate_models (tag ``evaluation.behaviour``: a blank image or lesion-free
tissue got a lesion, a flip changed the answer, a drawn lesion was missed) is not promoted,
not even as the first model. A version registered before the checks existed has no such
tag and is compared as before.

A version registered before the per-image predictions were kept cannot be paired: then the
point figures are compared as before (``min_gain`` on ``primary``, or on ``secondary``
while not worse on ``primary``; the external guard as above), and the reason says so.

Every decision is recorded as tags on the challenger's version (``promotion.*``, the
interval of each difference included) and as a run in the experiment ``busi-promotions``
(the history, which survives alias moves). ``busi promote-model --version N`` makes version
N the champion by hand: a promotion or a rollback, recorded the same way. Moving the
``champion`` alias in the MLflow UI has the same effect on serving, which always loads
``models:/busi-pipeline@champion``.

Core: ``PromotionRule``, ``decide_paired`` and ``decide`` (pure). Shell: ``promote``,
``promote_by_hand``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from busi import registry
from busi.config import load_section
from busi.errors import BusiError
from busi.model.uncertainty import BootstrapConfig, paired_differences, probability_at_least

logger = logging.getLogger(__name__)


# The figures evaluate_external tags a version with that the external guard may compare:
# higher is better (+1) or worse (-1).
EXTERNAL_FIGURES = {
    "lesion_dice_mean": 1,
    "lesion_dice_median": 1,
    "lesion_not_found": -1,
    "lesion_called_normal": -1,
    "malignant_recall": 1,
    "malignant_auc": 1,
    "benign_malignant_auc": 1,
    "normal_false_lesion_rate": -1,
}


def _is_margin(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class PromotionRule:
    primary: str = "macro_f1"
    guard: str = "malignant_recall"
    probability: float = 0.9  # how sure the gain (and the guard) must be
    max_guard_drop: float = 0.0
    bootstrap_samples: int = 2000
    seed: int = 0
    # Only for versions without per-image predictions: the old point comparison.
    secondary: str = "lesion_dice"
    min_gain: float = 0.01
    require_behaviour: bool = True  # a challenger failing the behavioural checks stays out
    # The standard deviation of primary between trainings that differ only in their seed
    # (0: the test images' noise only).
    primary_seed_sd: float = 0.0
    # External sets: {figure: the most the challenger may be worse than the champion}.
    external_guard: dict = field(default_factory=lambda: {"malignant_recall": 0.0})

    def __post_init__(self) -> None:
        if self.min_gain < 0 or self.max_guard_drop < 0:
            raise ValueError("min_gain and max_guard_drop must be >= 0")
        if self.primary_seed_sd < 0:
            raise ValueError(f"primary_seed_sd must be >= 0, got {self.primary_seed_sd}")
        if not 0.5 <= self.probability < 1:
            raise ValueError(f"probability must be in [0.5, 1), got {self.probability}")
        if not isinstance(self.external_guard, dict):
            raise ValueError(
                "external_guard must map a figure to its margin, e.g. {lesion_dice_mean: 0.02}, "
                f"or be {{}} to turn the external guard off; got {self.external_guard!r}"
            )
        unknown = sorted(set(self.external_guard) - set(EXTERNAL_FIGURES))
        if unknown:
            raise ValueError(
                f"external_guard: unknown figures {unknown}; evaluate_external gives "
                f"{sorted(EXTERNAL_FIGURES)}"
            )
        bad = {k: v for k, v in self.external_guard.items() if not _is_margin(v)}
        if bad:
            raise ValueError(f"external_guard: margins must be numbers >= 0, got {bad}")

    def bootstrap(self) -> BootstrapConfig:
        return BootstrapConfig(samples=self.bootstrap_samples, seed=self.seed)


@dataclass(frozen=True)
class Decision:
    promote: bool
    outcome: str  # first_model | promoted | rejected | already_champion | ...
    reason: str
    # figure -> {value, low, high, p}: challenger minus champion, for the record.
    differences: dict = field(default_factory=dict)


def _words(name: str, diff: dict) -> str:
    return f"{name} {diff['value']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"


def with_retraining_noise(draws: np.ndarray, seed_sd: float, seed: int) -> np.ndarray:
    """Bootstrap differences plus the difference of two seeds' effects, N(0, 2 sd^2)."""
    if seed_sd == 0 or draws.size == 0:
        return draws
    rng = np.random.default_rng(seed)
    return draws + rng.normal(0.0, np.sqrt(2.0) * seed_sd, draws.size)


def external_pairs(new: dict, old: dict, rule: PromotionRule) -> dict:
    """{dataset: {figure: (challenger's, champion's)}} for every set both versions were
    scored on (``VersionInfo.external()`` of each) and every figure of ``external_guard``
    both have as a number (an undefined figure, e.g. an AUC on a set of one class, is NaN:
    left out)."""
    return {
        dataset: {
            figure: (new[dataset][figure], old[dataset][figure])
            for figure in sorted(rule.external_guard)
            if math.isfinite(new[dataset].get(figure, math.nan))
            and math.isfinite(old[dataset].get(figure, math.nan))
        }
        for dataset in sorted(set(new) & set(old))
    }


def external_check(external: dict | None, rule: PromotionRule) -> tuple[str | None, dict]:
    """The external guard on ``external_pairs``' output: the reason it fails (None when it
    holds) and each figure's change, challenger minus champion, for the record."""
    record, failures = {}, []
    for dataset, figures in sorted((external or {}).items()):
        for figure, (new, old) in sorted(figures.items()):
            if figure not in rule.external_guard:
                continue  # not guarded (external_pairs leaves such figures out)
            record[f"external.{dataset}.{figure}"] = {"value": new - old}
            worse_by = (old - new) * EXTERNAL_FIGURES[figure]
            margin = rule.external_guard[figure]
            if worse_by > margin + 1e-12:
                failures.append(
                    f"{figure} {old:.3f} -> {new:.3f} on {dataset} (allowed {margin:.3f} worse)"
                )
    if not failures:
        return None, record
    return "guard on the external set: " + "; ".join(failures), record


def decide_paired(challenger, champion, rule: PromotionRule, external=None) -> Decision:
    """The paired rule on two per-image tables (uncertainty.PER_IMAGE_COLUMNS) of the same
    test images. ``external``: ``external_pairs``' {dataset: {figure: (challenger's,
    champion's)}}, compared as point figures (no images to pair there)."""
    try:
        diffs = paired_differences(
            challenger, champion, [rule.primary, rule.guard], rule.bootstrap()
        )
    except (ValueError, KeyError) as exc:
        return Decision(False, "rejected", f"the two versions cannot be paired: {exc}")
    gain, guard = diffs[rule.primary], diffs[rule.guard]
    gain_draws = with_retraining_noise(gain["draws"], rule.primary_seed_sd, rule.seed + 1)
    p_gain = probability_at_least(gain_draws, 0.0, strict=True)
    p_guard = probability_at_least(guard["draws"], -rule.max_guard_drop)
    record = {
        rule.primary: {k: gain[k] for k in ("value", "low", "high")}
        | {"p": p_gain, "seed_sd": rule.primary_seed_sd},
        rule.guard: {k: guard[k] for k in ("value", "low", "high")} | {"p": p_guard},
    }
    external_failed, external_record = external_check(external, rule)
    record |= external_record
    if gain["value"] is None or guard["value"] is None:
        return Decision(
            False, "rejected", f"{rule.primary} or {rule.guard} is undefined here", record
        )
    level = f"{rule.probability:.2f}"
    paired = f"on {diffs['n_images']} paired images ({diffs['n_groups']} groups)"
    if rule.primary_seed_sd:
        paired += f", with retraining noise (seed sd of {rule.primary} {rule.primary_seed_sd:.3f})"
    if p_guard < rule.probability:
        return Decision(
            False,
            "rejected",
            f"guard: P({rule.guard} change >= {-rule.max_guard_drop:+.3f}) = {p_guard:.2f} "
            f"< {level}; {_words(rule.guard, guard)} {paired}",
            record,
        )
    if external_failed:
        return Decision(False, "rejected", external_failed, record)
    words = f"{_words(rule.primary, gain)}, {_words(rule.guard, guard)} {paired}"
    if p_gain >= rule.probability:
        return Decision(
            True,
            "promoted",
            f"P({rule.primary} gain > 0) = {p_gain:.2f} >= {level}: {words}",
            record,
        )
    return Decision(
        False,
        "rejected",
        f"not better: P({rule.primary} gain > 0) = {p_gain:.2f} < {level}: {words}",
        record,
    )


def behaviour_gate(tags: dict[str, str], rule: PromotionRule) -> Decision | None:
    """A rejection when the rule requires the behavioural checks and the version's record
    says they failed; None (go on comparing) otherwise."""
    record = tags.get(registry.BEHAVIOUR_TAG, "")
    if not rule.require_behaviour or not record.startswith("failed"):
        return None
    return Decision(
        False,
        "rejected",
        f"behavioural checks {record} (evaluation.json: behaviour); promote_model."
        "require_behaviour is on",
    )


def decide(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    rule: PromotionRule,
    external: dict | None = None,
) -> Decision:
    """Whether figures ``challenger`` should replace ``champion`` (None: there is none), by
    the point figures alone: the fallback for versions without per-image predictions.
    ``external`` as for ``decide_paired``."""
    if champion is None:
        return Decision(True, "first_model", "there is no champion yet")
    external_failed, record = external_check(external, rule)
    if external_failed:
        return Decision(False, "rejected", external_failed, record)
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
        **{
            f"promotion.diff.{name}": json.dumps(diff, sort_keys=True)
            for name, diff in decision.differences.items()
        },
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
    for name, diff in decision.differences.items():
        figures |= {
            f"diff.{name}{'' if k == 'value' else '.' + k}": v
            for k, v in diff.items()
            if isinstance(v, int | float)
        }
    for key, value in figures.items():
        c.log_metric(run.info.run_id, key, value)
    c.set_terminated(run.info.run_id, "FINISHED")
    if mlflow.active_run() is not None:
        mlflow.set_tags(
            {"promotion.outcome": decision.outcome, "promotion.reason": decision.reason}
        )


def compare(c, challenger: registry.VersionInfo, champion, rule: PromotionRule) -> Decision:
    """The paired rule when both versions have per-image predictions, else the point rule
    with a reason that says why."""
    if champion is None:
        return decide(challenger.metrics(), None, rule)
    tables = {
        who: registry.per_image_predictions(c, info)
        for who, info in (("challenger", challenger), ("champion", champion))
    }
    lacking = [
        f"v{info.version}"
        for info, t in zip((challenger, champion), tables.values(), strict=True)
        if t is None
    ]
    external = external_pairs(challenger.external(), champion.external(), rule)
    if lacking:
        point = decide(challenger.metrics(), champion.metrics(), rule, external)
        why = (
            f"fallback to point figures: {' and '.join(lacking)} registered without per-image "
            "predictions (before they were kept), so no paired comparison is possible; "
        )
        logger.warning("%s", why + point.reason)
        return Decision(point.promote, point.outcome, why + point.reason, point.differences)
    return decide_paired(tables["challenger"], tables["champion"], rule, external)


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
    gate = behaviour_gate(challenger.tags, rule)
    if gate is not None:
        decision = gate
    elif champion is not None and champion.tags.get("test_split_md5") != challenger.tags.get(
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
        decision = compare(c, challenger, champion, rule)
    from busi import tracking

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
    from busi.cli import parser_for

    parser = parser_for("promote-model", "--params")
    parser.add_argument(
        "--version", type=int, default=None, help="make this version champion by hand"
    )
    parser.add_argument("--history", action="store_true", help="print the promotion history")
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
