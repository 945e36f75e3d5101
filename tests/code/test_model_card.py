"""The model card: rendered from an evaluation (intervals, per size and class, calibration,
failure modes counted), the older evaluation without intervals, and `busi show-model` on
the smoke champion, whose registration wrote the card as the version's description."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from busi.data.synthetic import synthetic_predictions
from busi.errors import BusiError
from busi.model.model_card import CardInputs, card_of, failure_modes, render_card
from components.evaluate_models import EvaluateConfig, uncertainty_report

TAGS = {
    "git_commit": "abc123",
    "data_version": "d41d8cd98f00b204e9800998ecf8427e.dir",
    "pipeline_run_id": "run-1",
    "external.site-b.malignant_recall": "0.71",
}
SPLITS = {
    "train": {"benign": 300, "malignant": 150, "normal": 90},
    "test": {"benign": 65, "malignant": 32, "normal": 21},
}


def evaluation() -> dict:
    table = synthetic_predictions(n_groups=60, seed=1)
    # Two small lesions the segmenter missed, one it found.
    small = table.index[table["class"] == "benign"][:3]
    table.loc[small, "true_area_fraction"] = 0.005
    table.loc[small[:2], ["tp", "dice"]] = 0
    return {
        "n_images": len(table),
        "headline": {"macro_f1": 0.7},
        "segmentation": {"normal_false_lesion_rate": 0.25, "n_normal": 20},
        "classification": {
            "class_names": ["benign", "malignant", "normal"],
            "confusion_matrix": [[15, 3, 2], [4, 16, 0], [1, 0, 19]],
        },
        **uncertainty_report(table, EvaluateConfig(bootstrap_samples=200)),
    }


def test_card_has_every_section_with_intervals_and_counted_failures():
    ev = evaluation()
    card = render_card(
        CardInputs(
            version=3,
            evaluation=ev,
            tags=TAGS,
            split_counts=SPLITS,
            params={"train_unet": {"epochs": 20}},
            training={"train_unet": {"wall_seconds": 600, "peak_mib": 2048, "machine": "Xeon"}},
        )
    )
    for heading in (
        "# busi-pipeline v3: model card",
        "## Intended use",
        "## Must not be used for",
        "## Data",
        "## Split and leakage rules",
        "## Figures on the test split",
        "### Per class",
        "### Per lesion size",
        "## Calibration",
        "## External validation and stress tests",
        "## Training cost",
        "## Lineage",
        "## Known failure modes",
    ):
        assert heading in card, heading
    macro = ev["intervals"]["figures"]["macro_f1"]
    assert f"{macro['value']:.3f} [{macro['low']:.3f}, {macro['high']:.3f}]" in card
    assert "not a diagnostic device" in card
    assert "| malignant | 150 | 32 |" in card
    assert "external site-b.malignant_recall | 0.71" in card
    assert "10.0 min | 2048 MiB | Xeon" in card
    assert "`abc123`" in card
    assert "epochs: 20" in card
    small = ev["per_lesion_size"]["small_lt1pct"]
    assert small["n_missed"] >= 2
    assert (
        f"Lesions under 1 % of the image: {small['n_missed']} of {small['n_images']} missed" in card
    )
    assert "Malignant images called benign: 4 of 20 (missed cancers)." in card
    assert "Normal images: a false lesion on 5 of 20 (25%)." in card


def test_an_evaluation_without_intervals_still_makes_a_card():
    old = {"n_images": 118, "headline": {"macro_f1": 0.738, "accuracy": 0.737}}
    card = render_card(CardInputs(version=1, evaluation=old, tags={}, split_counts={}))
    assert "no interval: evaluated before intervals were computed" in card
    assert "| macro-F1 (3 classes) | 0.738 |" in card
    assert "None recorded for this version" in card
    assert "Not recorded in this tracking" in card
    assert failure_modes(old) == [
        "None counted on the test split (it is small: see the intervals)."
    ]


def test_a_version_without_a_card_is_explained():
    version = SimpleNamespace(description="", version="2")
    client = SimpleNamespace(get_model_version=lambda name, v: version)
    with pytest.raises(BusiError, match="registered before cards were written"):
        card_of(client, 2)


@pytest.mark.slow
def test_show_model_prints_the_champions_card(smoke_champion, capsys):
    from busi.cli import main

    assert main(["show-model", "--tracking-uri", smoke_champion.tracking_uri]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# busi-pipeline v{smoke_champion.version}: model card")
    assert "## Known failure modes" in out
    assert "[" in out  # figures with intervals
    assert (
        main(["show-model", "--version", "99", "--tracking-uri", smoke_champion.tracking_uri]) == 2
    )
    assert "has no version 99" in capsys.readouterr().err


def test_a_long_card_is_cut_to_the_backend_s_description_column():
    # MLflow's SQL schema holds a version's description in VARCHAR(5000); Postgres refuses
    # more. A card past that gives up its least needed sections first: the failure modes,
    # the intended use and the figures stay (CI's card once lost its failure modes when it
    # was cut at the end).
    from busi.model.model_card import CARD_NAME, MAX_DESCRIPTION, description_of

    def section(title, n):
        return f"## {title}\n" + f"a line of {title}\n" * n + "\n"

    card = (
        "# card\n\n"
        + section("Intended use", 5)
        + section("Figures on the test split", 30)
        + section("Calibration", 100)
        + section("Lineage", 150)
        + section("Known failure modes", 10)
    )
    assert len(card) > MAX_DESCRIPTION
    cut = description_of(card)
    assert len(cut) <= MAX_DESCRIPTION
    assert "a line of Known failure modes\n" * 10 in cut
    assert "a line of Figures on the test split\n" * 30 in cut
    assert "a line of Intended use" in cut
    assert "a line of Lineage" not in cut  # dropped first
    assert "a line of Calibration\n" * 100 in cut  # not needed: the card fits without Lineage
    assert f"## Lineage\n(in the full card: the artifact {CARD_NAME})" in cut

    # Nothing to drop: cut at the end, with a pointer.
    flat = "# card\n" + "a line of the card\n" * 400
    cut = description_of(flat)
    assert len(cut) == MAX_DESCRIPTION
    assert cut.startswith(flat[:1000])
    assert cut.rstrip().endswith(f"artifact {CARD_NAME})")
    assert description_of("# short card\n") == "# short card\n"


def test_the_whole_card_comes_from_the_artifact_when_the_description_was_shortened(tmp_path):
    from pathlib import Path
    from types import SimpleNamespace

    from busi.model.model_card import CARD_NAME, description_of, full_card

    card = (
        "# card\n\n## Lineage\n" + "a line of Lineage\n" * 400 + "\n## Known failure modes\n- x\n"
    )
    downloads = []

    class Client:
        def download_artifacts(self, run_id, path, dst):
            downloads.append((run_id, path))
            out = Path(dst) / CARD_NAME
            out.write_text(card)
            return str(out)

    tags = {"model_card": f"runs:/r1/model_card/{CARD_NAME}"}
    shortened = SimpleNamespace(description=description_of(card), tags=tags)
    assert len(shortened.description) < len(card)
    assert full_card(Client(), shortened) == card
    assert downloads == [("r1", f"model_card/{CARD_NAME}")]
    whole = SimpleNamespace(description="# short card\n", tags=tags)
    assert full_card(Client(), whole) == "# short card\n"
    assert len(downloads) == 1  # a card that fits is not downloaded
