"""predict_images: ``busi predict IMAGE...``: the champion's answer for image files, one JSON
line per image on stdout.

Each line holds ``file``, the pyfunc's fields (``class``, ``prob_*``, ``lesion_found``,
``lesion_area``, ``box``, ``height``, ``width``) and ``model`` ({name, version, alias});
``mask_png`` (base64 PNG) only with ``--with-mask``. ``--out DIR`` writes each lesion mask
as ``DIR/<file stem>_mask.png`` and names it in ``mask_file``. A file that cannot be read or
is not a usable PNG/JPEG gets an error line on stderr; the others still get their result,
and the exit code is then 2.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from busi.model.pipeline_model import MAX_PIXELS, InvalidImageError, decode_upload
from busi.serving.server import DEFAULT_MODEL_URI, MAX_BYTES, load_resolved, predict_rows


def read_image(path: Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The file's bytes after the checks the server makes (size, content type, pixel count)."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InvalidImageError(f"too_large: {size} bytes, over the limit of {max_bytes}")
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidImageError(f"cannot read: {exc.strerror or exc}") from exc
    decode_upload(data, MAX_PIXELS)
    return data


def result_line(name: str, row: dict, model: dict, with_mask: bool) -> dict:
    fields = {k: v for k, v in row.items() if with_mask or k != "mask_png"}
    return {"file": name, **fields, "model": model}


def mask_name(path: Path, used: set[str]) -> str:
    """``<stem>_mask.png``, numbered when two inputs share a stem."""
    name, n = f"{path.stem}_mask.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}_mask.png"
    used.add(name)
    return name


def main_predict(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("predict")
    parser.add_argument(
        "images", nargs="+", type=Path, metavar="IMAGE", help="image files (PNG, JPEG, ...)"
    )
    parser.add_argument(
        "--model-uri",
        default=DEFAULT_MODEL_URI,
        help="the MLflow model to use (default: %(default)s)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    parser.add_argument("--with-mask", action="store_true", help="include mask_png (base64)")
    parser.add_argument("--out", type=Path, default=None, help="write the mask PNGs here")
    args = parser.parse_args(argv)

    good: list[tuple[Path, bytes]] = []
    failed = 0
    for path in args.images:
        try:
            good.append((path, read_image(path)))
        except InvalidImageError as exc:
            print(f"busi predict: {path}: error: {exc}", file=sys.stderr)
            failed += 1
    if good:
        ref, model = load_resolved(args.model_uri, args.tracking_uri)
        rows = predict_rows(model, [data for _, data in good])
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for (path, _), row in zip(good, rows, strict=True):
            line = result_line(str(path), row, ref.describe(), args.with_mask)
            if args.out is not None:
                mask_file = args.out / mask_name(path, used)
                mask_file.write_bytes(base64.b64decode(row["mask_png"]))
                line["mask_file"] = str(mask_file)
            print(json.dumps(line), flush=True)
    return 2 if failed else 0
