"""validate_data: build the image manifest of a BUSI-layout folder, gate it with Great
Expectations and pixel checks, and quarantine (list, never touch) what cannot be used.

Core: ``busi.data.validation`` (``validate_corpus`` and its parts, shared with ingest_batch)
and ``trainability_problems``. Shell: ``main`` reads ``params.yaml`` and the data folder and
writes ``data/manifest.csv`` and ``reports/validation.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from busi.config import load_section
from busi.data.validation import (
    ValidateConfig,
    ValidationResult,
    list_files,
    list_folders,
    summarize,
    trainability_problems,
    validate_corpus,
)
from busi.errors import BusiError


def run(
    data_dir: Path, manifest_path: Path, report_path: Path, cfg: ValidateConfig
) -> ValidationResult:
    """Validate ``data_dir`` and write the manifest and the report; raise if it cannot train."""
    from tqdm import tqdm

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise BusiError(
            f"data folder {data_dir} does not exist: run `busi ingest-data SOURCE` first "
            "(or `dvc pull` to fetch the versioned data)"
        )
    result = validate_corpus(
        list_files(data_dir),
        read=lambda rel: (data_dir / rel).read_bytes(),
        size_of=lambda rel: (data_dir / rel).stat().st_size,
        cfg=cfg,
        progress=lambda it: tqdm(it, desc="validate-data", unit="img", leave=False),
        folders=list_folders(data_dir),
    )
    result.report["data_dir"] = data_dir.as_posix()
    problems = trainability_problems(result.report, cfg)
    result.report["trainable"] = not problems
    result.report["problems"] = problems
    for path in (manifest_path, report_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    result.manifest.to_csv(manifest_path, index=False)
    Path(report_path).write_text(json.dumps(result.report, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("validate-data", "--data-dir", "--manifest", "--params")
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("reports/validation.json"),
        help="where to write the report (JSON) (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    cfg = load_section(args.params, "validate_data", ValidateConfig)
    from busi import tracking

    with tracking.step_run("validate_data", asdict(cfg)):
        result = run(args.data_dir, args.manifest, args.report, cfg)
        counts = result.report["counts"]
        tracking.log_step_outputs(
            {k: v for k, v in counts.items() if not isinstance(v, dict)}, artifacts=[args.report]
        )
    print(summarize(result.report))
    print(f"manifest: {args.manifest}  report: {args.report}")
    if result.report["problems"]:
        raise BusiError(
            "the validated data cannot train a model: "
            + "; ".join(result.report["problems"])
            + f". See {args.report}; fix or add data, then re-ingest."
        )
    return 0
