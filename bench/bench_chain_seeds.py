"""The whole chain over seeds: every headline figure as the mean and range over N retrainings
(U-Net included), each with its bootstrap 95 % interval on the frozen test split, and the
stress tests per shift; against issue 13's bars.

    python bench/bench_chain_seeds.py --seeds 0 1 2            # the real data ($BUSI_SOURCE)
    python bench/bench_chain_seeds.py --profile smoke --seeds 0 1   # a check in minutes
    python bench/bench_chain_seeds.py --seeds 0 1 2 --reuse 0=metrics  # seed 0 = the project's run
    python bench/bench_chain_seeds.py --split val --name X --set ... --seeds 2 \
        --carry bench/results/chain_seeds_val_X.json   # seeds 0, 1 from an earlier session

Choosing a setting (issue 13: on the val split and the stress tests, never on test): a
candidate is the project's params with ``--set`` changes, scored with ``--split val``
(evaluate_models and stress_test_models on the val split), under a ``--name`` of its own:

    python bench/bench_chain_seeds.py --split val --name base --seeds 0 1 2
    python bench/bench_chain_seeds.py --split val --name shifts --seeds 0 1 2 \
        --set crop_rois.threshold_choice=val augment_data.crop=0.5

The seed workspaces are shared by the candidates, so DVC reruns only the stages whose
params changed (a classifier setting keeps the seed's U-Net).

Each seed runs `busi run-pipeline` in a scratch workspace of its own
(scratch/chain-seeds/<profile>/seed-<n>/, the project's frozen split copied in) with
augment_data, train_unet and train_classifier seeded n; nothing of the project is touched.
One seed is estimated at about 40 min on the slowest machine type (AMD EPYC, 2 cores: the
sum of the stage times in bench/results/models.md, not a timed run): run it when nothing
else trains. Writes bench/results/chain_seeds.{json,md} (for another profile or split, or a
named candidate: chain_seeds_<profile>_<split>_<name>, the parts that are not the default).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEEDED = ("augment_data", "train_unet", "train_classifier")
FIGURES = ("lesion_dice", "normal_false_lesion_rate", "accuracy", "macro_f1", "malignant_auc")
# issue 13's bars on the BUSI test split: (figure, at least | at most, value)
BARS = {
    "lesion_dice": (">=", 0.75),
    "normal_false_lesion_rate": ("<=", 0.10),
    "accuracy": (">=", 0.80),
    "macro_f1": (">=", 0.78),
    "malignant_auc": (">=", 0.92),
}
# stress_test.json's figure per shift -> the bar on it
STRESS_BARS = {"lesion_dice_mean_drop": ("<=", 0.05), "lesion_called_normal": ("<=", 0.10)}
# stress_test.json's unshifted figures -> the aim issue 13 sets for them on the external set
UNSHIFTED_AIMS = {"lesion_not_found": ("<=", 0.10), "lesion_called_normal": ("<=", 0.10)}


def seed_settings(seed: int, changes: dict | None = None, offsets: dict | None = None) -> dict:
    """params.yaml-shaped settings for one seed: ``changes`` with every seeded step's seed,
    plus that step's offset from ``offsets`` ({step: n}: a reseed of that step alone, which
    measures its retraining noise on the same inputs)."""
    settings = {section: dict(values) for section, values in (changes or {}).items()}
    for step in SEEDED:
        settings.setdefault(step, {})["seed"] = seed + (offsets or {}).get(step, 0)
    return settings


def parse_offsets(items: list[str]) -> dict[str, int]:
    """``STEP=N`` pairs -> {step: n}, for the seeded steps only."""
    offsets = {}
    for item in items:
        step, sep, value = item.partition("=")
        if not sep or step not in SEEDED or not value.lstrip("-").isdigit():
            raise SystemExit(
                f"--seed-offset {item!r}: write STEP=N with STEP one of {', '.join(SEEDED)}, "
                "e.g. train_classifier=100"
            )
        offsets[step] = int(value)
    return offsets


SPLIT_STEPS = ("evaluate_models", "stress_test_models")


def parse_changes(items: list[str], params: dict, split: str = "test") -> dict:
    """``SECTION.KEY=VALUE`` (the value read as YAML) -> {section: {key: value}}, checked
    against the project's params (a misspelt name would silently change nothing); ``split``
    sets the split that evaluate_models and stress_test_models score."""
    changes: dict[str, dict] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise SystemExit(f"--set {item!r}: write SECTION.KEY=VALUE, e.g. train_unet.epochs=30")
        if key not in (params.get(section) or {}):
            raise SystemExit(f"--set {item!r}: params.yaml has no {section}.{key}")
        if section in SPLIT_STEPS and key == "split":
            raise SystemExit(f"--set {item!r}: use --split")
        changes.setdefault(section, {})[key] = yaml.safe_load(raw)
    for step in SPLIT_STEPS:
        changes.setdefault(step, {})["split"] = split
    return changes


def results_name(profile: str, split: str, name: str | None) -> str:
    parts = ["chain_seeds"]
    parts += [profile] if profile != "default" else []
    parts += [split] if split != "test" else []
    parts += [name] if name else []
    return "_".join(parts)


def _meets(value: float | None, bar: tuple[str, float]) -> bool | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    op, limit = bar
    return value >= limit if op == ">=" else value <= limit


def _spread(values: list[float]) -> dict:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    if not finite:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {
        "mean": sum(finite) / len(finite),
        "min": min(finite),
        "max": max(finite),
        "n": len(finite),
    }


def _with_bar(spread: dict, bar: tuple[str, float]) -> dict:
    return {**spread, "bar": list(bar), "mean_meets_bar": _meets(spread["mean"], bar)}


def summarize(per_seed: dict[int, dict]) -> dict:
    """From each seed's evaluation.json (and stress_test.json, when present, under
    ``stress``): per figure the mean, min and max over seeds, each seed's value with its
    bootstrap interval, and whether the mean meets the bar; per shift the mean, range and
    each seed's Dice drop and called-normal share."""
    figures = {}
    for name in FIGURES:
        seeds = {}
        for seed, result in sorted(per_seed.items()):
            entry = ((result.get("intervals") or {}).get("figures") or {}).get(name) or {}
            value = result.get("headline", {}).get(name, entry.get("value"))
            seeds[seed] = {"value": value, "low": entry.get("low"), "high": entry.get("high")}
        spread = _spread([s["value"] for s in seeds.values()])
        figures[name] = {**_with_bar(spread, BARS[name]), "seeds": seeds}
    for name, aim in UNSHIFTED_AIMS.items():  # no bootstrap interval: the value alone
        seeds = {
            seed: {"value": unshifted[name], "low": None, "high": None}
            for seed, result in sorted(per_seed.items())
            if name in (unshifted := (result.get("stress") or {}).get("unshifted") or {})
        }
        if seeds:
            spread = _spread([s["value"] for s in seeds.values()])
            figures[name] = {**_with_bar(spread, aim), "seeds": seeds}
    shifts: dict[str, dict] = {}
    for seed, result in sorted(per_seed.items()):
        for shift, row in ((result.get("stress") or {}).get("shifts") or {}).items():
            for key in STRESS_BARS:
                value = row.get(key)
                if value is not None:
                    shifts.setdefault(shift, {}).setdefault(key, {})[seed] = value
    # each seed's value kept beside the spread, so that one seed can be paired later
    stress = {
        shift: {key: {**_with_bar(_spread(list(vals.values())), STRESS_BARS[key]), "seeds": vals}
                for key, vals in keys.items()}
        for shift, keys in sorted(shifts.items())
    }  # fmt: skip
    # The behavioural checks the promotion guard reads (evaluate_models): which failed, a seed
    behaviour = {
        seed: sorted(result["behaviour"].get("failed") or [])
        for seed, result in sorted(per_seed.items())
        if isinstance(result.get("behaviour"), dict)
    }
    return {"figures": figures, "stress": stress, "behaviour": behaviour, "n_seeds": len(per_seed)}


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render(result: dict) -> str:
    from bench.results_files import isa_note

    m = result["machine"]
    lines = [
        f"Measured {result['date']} on {m['cpu']} ({m['cores']} cores{isa_note(m)}), "
        f"commit {m['commit']}, "
        f"profile `{result['profile']}`, {result.get('split', 'test')} split, "
        f"seeds {result['seeds']}: "
        + (
            f"{result['minutes_per_seed']:.1f} min a seed."
            if result.get("minutes_per_seed") is not None
            else "no seed trained in this run."
        ),
        *(
            [f"Settings changed from params.yaml: `{json.dumps(result['changes'])}`."]
            if result.get("changes")
            else []
        ),
        *(
            [f"Seeds offset (that step retrained from seed + N): `{json.dumps(offsets)}`."]
            if (offsets := result.get("seed_offsets"))
            else []
        ),
        *(
            [f"Seeds taken from an existing run (same code, data and params): {reused}."]
            if (reused := ", ".join(f"{k} from `{v}`" for k, v in result.get("reused", {}).items()))
            else []
        ),
        "",
        "| figure | mean | min-max over seeds | each seed [95 % interval] | bar | mean meets it |",
        "|---|---:|---:|---|---|---|",
    ]
    for name, row in result["summary"]["figures"].items():
        each = "; ".join(
            f"{_fmt(s['value'])} [{_fmt(s['low'])}, {_fmt(s['high'])}]"
            for s in row["seeds"].values()
        )
        op, limit = row["bar"]
        lines.append(
            f"| {name} | {_fmt(row['mean'])} | {_fmt(row['min'])}-{_fmt(row['max'])} | {each} "
            f"| {op} {limit} | {row['mean_meets_bar']} |"
        )
    if behaviour := result["summary"].get("behaviour"):
        passed = sum(not failed for failed in behaviour.values())
        each = "; ".join(
            f"seed {seed}: " + (f"failed {', '.join(failed)}" if failed else "passed")
            for seed, failed in behaviour.items()
        )
        lines += ["", f"Behavioural checks (the promotion guard's): {passed} of "
                  f"{len(behaviour)} seeds pass ({each})."]  # fmt: skip
    if result["summary"]["stress"]:
        lines += ["", "| shift | Dice drop (mean, min-max) | called normal (mean, min-max) |"]
        lines += ["|---|---|---|"]
        for shift, row in result["summary"]["stress"].items():
            cells = [
                f"{_fmt(row[k]['mean'])} ({_fmt(row[k]['min'])}-{_fmt(row[k]['max'])})"
                if k in row
                else "n/a"
                for k in STRESS_BARS
            ]
            lines.append(f"| {shift} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def read_seed(folder: Path) -> dict:
    """A seed's figures from a metrics folder a run left (evaluation.json, stress_test.json)."""
    evaluation = folder / "evaluation.json"
    if not evaluation.is_file():
        raise SystemExit(f"--reuse: no evaluation.json in {folder}: name a run's metrics folder")
    result = json.loads(evaluation.read_text())
    stress = folder / "stress_test.json"
    if stress.is_file():
        result["stress"] = json.loads(stress.read_text())
    return result


def seeds_from_results(record: dict) -> dict[int, dict]:
    """Each seed's figures as ``read_seed`` gives them (what ``summarize`` reads), rebuilt
    from a results record this script wrote: its summary keeps every seed's values. So the
    seeds of an earlier session, whose workspaces are gone, can be carried into a new run
    (``--carry``); ``summarize`` of the rebuilt seeds gives the record's summary again."""
    summary = record["summary"]
    split = record.get("split", "test")
    out: dict[int, dict] = {}

    def seed_entry(seed) -> dict:
        return out.setdefault(
            int(seed), {"split": split, "headline": {}, "intervals": {"figures": {}}}
        )

    for name, figure in summary["figures"].items():
        for seed, entry in figure["seeds"].items():
            if name in FIGURES:
                seed_entry(seed)["headline"][name] = entry["value"]
                seed_entry(seed)["intervals"]["figures"][name] = dict(entry)
            else:  # an unshifted stress figure (UNSHIFTED_AIMS)
                unshifted = seed_entry(seed).setdefault("stress", {}).setdefault("unshifted", {})
                unshifted[name] = entry["value"]
    for shift, keys in summary["stress"].items():
        for key, figure in keys.items():
            if "seeds" not in figure:
                raise SystemExit(
                    "--carry: this results file was written before each seed's stress figures "
                    "were kept; its seeds cannot be carried (rerun them, or --reuse their "
                    "metrics folders)"
                )
            for seed, value in figure["seeds"].items():
                stress = seed_entry(seed).setdefault("stress", {})
                stress.setdefault("shifts", {}).setdefault(shift, {})[key] = value
    for seed, failed in summary.get("behaviour", {}).items():
        seed_entry(seed)["behaviour"] = {"passed": not failed, "failed": list(failed)}
    return out


def candidate_of(record: dict) -> tuple:
    """What makes a results record one candidate's: (profile, split, settings changed, seed
    offsets); records of two candidates are never merged or overwritten by each other."""
    return (record.get("profile"), record.get("split", "test"), record.get("changes") or {},
            record.get("seed_offsets") or {})  # fmt: skip


def carried_seeds(path: Path, profile: str, split: str, changes: dict, offsets: dict) -> dict:
    """{seed: figures} from ``--carry``'s results file, refused unless it is the same
    candidate (profile, split, settings changed, seed offsets)."""
    if not path.is_file():
        raise SystemExit(f"--carry {path}: no such results file")
    record = json.loads(path.read_text())
    theirs = candidate_of(record)
    if theirs != (profile, split, changes, offsets):
        raise SystemExit(
            f"--carry {path}: another candidate (profile, split, changes, offsets "
            f"{theirs}); this run is {(profile, split, changes, offsets)}"
        )
    return seeds_from_results(record)


def check_results_file(
    path: Path, profile: str, split: str, changes: dict, offsets: dict, kept: set[int]
) -> None:
    """Refuse a run whose results file would overwrite another candidate's record (profile,
    split, settings changed, seed offsets), or drop seeds that file holds, before anything
    trains: a classifier reseed under the candidate's own ``--name`` would otherwise replace
    the candidate's runs with the reseed's."""
    if not path.is_file():
        return
    record = json.loads(path.read_text())
    theirs = candidate_of(record)
    ours = (profile, split, changes, offsets)
    if theirs != ours:
        raise SystemExit(
            f"{path} holds another candidate's runs (profile, split, changes, offsets "
            f"{theirs}); this run is {ours}. Give this run a --name of its own (e.g. "
            "NAME_c100 for --seed-offset train_classifier=100), or move that file away."
        )
    dropped = sorted(set(int(seed) for seed in record.get("seeds", [])) - kept)
    if dropped:
        raise SystemExit(
            f"{path} holds seeds {dropped} that this run would drop: pass --carry {path} to "
            "keep them (or --seeds them again), or move that file away."
        )


def parse_reuse(items: list[str]) -> dict[int, Path]:
    """``SEED=FOLDER`` pairs: a seed whose run already exists (same code, data and params)."""
    from bench.results_files import seed_paths

    return seed_paths(items, "--reuse", "SEED=FOLDER, e.g. 0=metrics")


def keep_per_image(workspace: Path, dest: Path) -> Path | None:
    """Copy a run's per-image table (evaluate_models' ``plots/evaluation/per_image.csv``:
    image ids, classes, probabilities and mask figures, no pixels) to ``dest``: the next run
    in the same workspace (a classifier reseed) overwrites it, and bench_chain_errors.py
    reads it. None when the run wrote no table."""
    table = workspace / "plots" / "evaluation" / "per_image.csv"
    if not table.is_file():
        return None
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(table, dest)
    return dest


def run_seed(
    profile: str,
    seed: int,
    base: Path,
    name: str,
    changes: dict | None = None,
    offsets: dict | None = None,
) -> dict:
    """Train and score one seed's chain in its workspace; its per-image table is kept as
    ``bench/results/per_image/<name>_seed<N>.csv`` (``name``: the results file's)."""
    from bench import results_files
    from components.run_pipeline import run

    workspace = base / f"seed-{seed}" / "workspace"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{base / 'mlflow.db'}"
    run(profile, None, REPO, workspace, seed_settings(seed, changes, offsets))
    keep_per_image(workspace, results_files.RESULTS / "per_image" / f"{name}_seed{seed}.csv")
    return read_seed(workspace / "metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--profile", default="default", help="default (real data) or smoke")
    parser.add_argument(
        "--reuse",
        nargs="*",
        default=[],
        metavar="SEED=FOLDER",
        help="take a seed's figures from the metrics folder of a run that exists (same code, "
        "data and params; the steps are deterministic on one machine), e.g. 0=metrics for "
        "the project's own run, whose seeds are all 0",
    )
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="the split evaluate_models and stress_test_models score: test for the figures "
        "reported, val to choose between settings",
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a candidate setting: params.yaml changed so (the value read as YAML)",
    )
    parser.add_argument(
        "--seed-offset",
        nargs="*",
        default=[],
        metavar="STEP=N",
        help="add N to one seeded step's seed (e.g. train_classifier=100): the same chain "
        "with that step alone retrained from another seed, to measure its noise",
    )
    parser.add_argument(
        "--carry",
        type=Path,
        metavar="RESULTS.json",
        help="take the seeds of an earlier run of this candidate from its results file (its "
        "workspaces gone, e.g. on another machine): they are not retrained; --seeds names "
        "the ones to add",
    )
    parser.add_argument("--name", help="the candidate's name, part of the results file's name")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    reused = parse_reuse(args.reuse)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    changes = parse_changes(args.set, params, args.split)
    offsets = parse_offsets(args.seed_offset)
    from bench import results_files
    from bench.bench_models import machine

    recorded = {k: v for k, v in changes.items() if k not in SPLIT_STEPS or len(v) > 1}
    carried = {}
    if args.carry:
        carried = carried_seeds(args.carry, args.profile, args.split, recorded, offsets)
        carried = {seed: f for seed, f in carried.items() if seed not in reused}
    name = results_name(args.profile, args.split, args.name)
    kept = set(args.seeds) | set(reused) | set(carried)
    check_results_file(
        results_files.RESULTS / f"{name}.json", args.profile, args.split, recorded, offsets, kept
    )
    base = REPO / "scratch" / "chain-seeds" / args.profile
    start = time.perf_counter()
    trained = [seed for seed in args.seeds if seed not in reused and seed not in carried]
    per_seed = {
        seed: run_seed(args.profile, seed, base, name, changes, offsets) for seed in trained
    }
    for seed, folder in reused.items():
        per_seed[seed] = read_seed(folder)
        if per_seed[seed].get("split", "test") != args.split:
            raise SystemExit(f"--reuse {seed}={folder}: scored on another split than {args.split}")
    minutes = (time.perf_counter() - start) / 60 / len(trained) if trained else None
    said = {str(seed): str(folder) for seed, folder in reused.items()}
    for seed, figures in carried.items():
        per_seed[seed] = figures
        said[str(seed)] = f"{args.carry} (an earlier run)"
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "profile": args.profile,
        "split": args.split,
        "changes": recorded,
        "seed_offsets": offsets,
        "name": args.name,
        "seeds": sorted(per_seed),
        "reused": said,
        "minutes_per_seed": minutes,
        "summary": summarize(per_seed),
    }
    rendered = render(result)
    title = f"The chain over seeds, profile {args.profile}, {args.split} split"
    title += f", candidate {args.name}" if args.name else ""
    results_files.write_results(name, title, result, rendered, script="bench/bench_chain_seeds.py")
    print(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
