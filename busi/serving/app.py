"""app: the Streamlit page of busi-pipeline: upload a breast-ultrasound image, see the lesion
outlined, the region of interest the classifier looked at, and the class probabilities.

A research tool, not a diagnostic device. Run it with ``busi app`` (or ``make app``): it
listens on 127.0.0.1:8501. Settings: ``MLFLOW_TRACKING_URI`` (the registry) and
``BUSI_MODEL_URI`` (default ``models:/busi-pipeline@champion``); ``busi app --tracking-uri
--model-uri`` set them. The alias is resolved again after at most 30 s, and each version is
loaded once, so a new champion reaches the page within a minute without a restart.

Uploads stay in memory: the bytes are checked (size, PNG/JPEG from the content, the
decompression-bomb guard), decoded and predicted without being written anywhere.

The pure parts (``draw_overlay``, ``crop_box``, ``format_result``, ``analyse``) take arrays
and bytes; ``render_result`` and ``page`` are the Streamlit shell.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st

from busi.data.preprocess import CLASSES
from busi.model.pipeline_model import MAX_PIXELS, InvalidImageError, decode_upload
from busi.serving.server import DEFAULT_MODEL_URI, MAX_BYTES, ModelRef

logger = logging.getLogger(__name__)

TITLE = "BUSI lesion segmentation and classification"
DISCLAIMER = (
    "**Research tool, not a diagnostic device.** The model was trained on a public research "
    "dataset (BUSI); its output must not be used to diagnose or to decide on treatment."
)
INSTRUCTIONS = (
    "Upload a breast-ultrasound image (PNG or JPEG, at most {mb} MB). The page outlines the "
    "lesion the segmenter finds, shows the region of interest the classifier looked at, and "
    "gives the probability of each class (benign, malignant, normal). The image is processed "
    "in memory and not stored."
)
NO_CARD = (
    "This version has no model card: it was registered before cards were written. "
    "Register the models again (`busi register-model`) to make one."
)
OUTLINE_RGB = (255, 60, 60)
BOX_RGB = (60, 200, 255)
RESOLVE_TTL_S = 30


@dataclass(frozen=True)
class ResultView:
    """What the page says of one prediction, formatted."""

    label: str
    probabilities: list[tuple[str, float]]  # CLASSES order
    lesion: str
    box: tuple[int, int, int, int]
    lesion_found: bool


def format_result(row: dict) -> ResultView:
    box = tuple(int(v) for v in row["box"])
    if row["lesion_found"]:
        top, left, bottom, right = box
        lesion = (
            f"Lesion found: {row['lesion_area']:.1%} of the image, region of interest "
            f"rows {top}-{bottom}, columns {left}-{right}."
        )
    else:
        lesion = "No lesion found: the classifier looked at the whole image."
    return ResultView(
        label=str(row["class"]),
        probabilities=[(c, float(row[f"prob_{c}"])) for c in CLASSES],
        lesion=lesion,
        box=box,
        lesion_found=bool(row["lesion_found"]),
    )


def decode_mask_png(mask_png: str) -> np.ndarray:
    """The boolean mask from the pyfunc's base64 PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(mask_png))) as img:
        return np.asarray(img.convert("L")) >= 128


def _thickness(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[:2]) / 200))


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The pixels of ``mask`` within ``thickness`` of its edge (the image border counts)."""
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    inner = binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def draw_overlay(
    image: np.ndarray, mask: np.ndarray, box=None, thickness: int | None = None
) -> np.ndarray:
    """RGB uint8: the grayscale image with the lesion's outline and, if given, the ROI box."""
    image = np.asarray(image, dtype=np.uint8)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in size")
    t = thickness or _thickness(image.shape)
    rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3].copy()
    if box is not None:
        top, left, bottom, right = (int(v) for v in box)
        edge = np.zeros(mask.shape, dtype=bool)
        edge[top:bottom, left:right] = True
        edge[top + t : bottom - t, left + t : right - t] = False
        rgb[edge] = BOX_RGB
    rgb[outline(mask, t)] = OUTLINE_RGB
    return rgb


def crop_box(image: np.ndarray, box) -> np.ndarray:
    """The box (top, left, bottom, right; bottom/right exclusive) cut from the image."""
    top, left, bottom, right = (int(v) for v in box)
    height, width = image.shape[:2]
    top, left = max(0, top), max(0, left)
    bottom, right = min(height, bottom), min(width, right)
    if bottom <= top or right <= left:
        raise ValueError(f"box {box} is empty inside a {height}x{width} image")
    return image[top:bottom, left:right]


@dataclass(frozen=True)
class Analysis:
    image: np.ndarray  # the decoded grayscale upload
    row: dict  # the pyfunc's fields
    view: ResultView
    mask: np.ndarray

    def overlay(self) -> np.ndarray:
        return draw_overlay(
            self.image, self.mask, self.view.box if self.view.lesion_found else None
        )

    def roi(self) -> np.ndarray:
        return crop_box(self.image, self.view.box)


def check_upload(data: bytes, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The upload's pixels, or InvalidImageError saying why it cannot be used."""
    if len(data) > max_bytes:
        raise InvalidImageError(
            f"too_large: {len(data) / 2**20:.1f} MB, over the limit of {max_bytes / 2**20:.0f} MB"
        )
    return decode_upload(data, MAX_PIXELS)


def analyse(data: bytes, model, max_bytes: int = MAX_BYTES) -> Analysis:
    """Check, decode and predict one upload (bytes in memory; nothing is written)."""
    from busi.serving.server import predict_rows

    image = check_upload(data, max_bytes)
    row = predict_rows(model, [data])[0]
    return Analysis(image, row, format_result(row), decode_mask_png(row["mask_png"]))


# --- the Streamlit shell --------------------------------------------------------------------


@st.cache_data(ttl=RESOLVE_TTL_S, show_spinner=False)
def resolve_cached(model_uri: str, tracking_uri: str) -> ModelRef:
    """The version the alias points at, checked again at most every 30 s."""
    from busi.serving.server import registry_client, resolve_model

    return resolve_model(model_uri, registry_client(model_uri, tracking_uri))


@st.cache_resource(max_entries=2, show_spinner="Loading the model (once per version)...")
def load_cached(load_uri: str, tracking_uri: str):
    """One loaded pyfunc per version (and registry), shared by all sessions."""
    from busi.serving.server import load_pyfunc

    return load_pyfunc(load_uri, tracking_uri)


@st.cache_data(ttl=RESOLVE_TTL_S, show_spinner=False)
def model_card_cached(name: str, version: str, tracking_uri: str) -> str | None:
    """The model card (the registered version's description), checked again every 30 s."""
    from busi.model.model_card import version_description

    return version_description(name, version, tracking_uri)


def render_model_card(ref: ModelRef, tracking: str) -> None:
    """The served version's model card, folded under the caption."""
    if not (ref.name and ref.version):
        return
    try:
        card = model_card_cached(ref.name, ref.version, tracking)
    except Exception as exc:  # the page still predicts without its card
        logger.exception("reading the model card of %s failed", ref.label())
        st.caption(f"The model card of {ref.label()} could not be read ({type(exc).__name__}).")
        return
    with st.expander(f"Model card of {ref.label()}: intended use, figures, failure modes"):
        st.markdown(card or NO_CARD)


def current_model() -> tuple[ModelRef, str]:
    from busi.tracking import tracking_uri

    uri = tracking_uri()
    return resolve_cached(os.environ.get("BUSI_MODEL_URI") or DEFAULT_MODEL_URI, uri), uri


def render_result(data: bytes, name: str, model) -> Analysis | None:
    """The result of one upload on the page, or a readable error (never a traceback)."""
    try:
        with st.spinner("Segmenting and classifying..."):
            result = analyse(data, model)
    except InvalidImageError as exc:
        st.error(f"**{name}** cannot be used: {exc}. Upload a PNG or JPEG ultrasound image.")
        return None
    except Exception as exc:  # the model failed: say so, keep the details in the log
        logger.exception("prediction failed for an upload")
        st.error(f"The model failed on **{name}** ({type(exc).__name__}: {exc}).")
        return None
    view = result.view
    st.subheader(f"Predicted class: {view.label}")
    left, right = st.columns(2)
    left.image(result.image, caption="Original", width="stretch", alt="original")
    right.image(
        result.overlay(),
        caption="Lesion outlined (red), region of interest (blue)",
        width="stretch",
        alt="overlay",
    )
    roi_col, prob_col = st.columns(2)
    roi_col.image(result.roi(), caption="Region of interest (the classifier's input)", alt="roi")
    with prob_col:
        st.markdown("**Class probabilities**")
        for cls, p in view.probabilities:
            st.progress(min(max(p, 0.0), 1.0), text=f"{cls}: {p:.1%}")
        st.write(view.lesion)
    return result


def page() -> None:
    st.set_page_config(page_title="busi-pipeline", layout="wide")
    st.title(TITLE)
    st.warning(DISCLAIMER)
    try:
        ref, tracking = current_model()
    except Exception as exc:  # BusiError says what to start or promote
        st.error(f"No model to run: {exc}")
        st.info(INSTRUCTIONS.format(mb=MAX_BYTES // 2**20))
        return
    st.caption(f"Model: {ref.label()}")
    render_model_card(ref, tracking)
    upload = st.file_uploader(
        "Breast-ultrasound image (PNG or JPEG; the type is read from the content)",
        key="upload",
        max_upload_size=MAX_BYTES // 2**20,
    )
    if upload is None:
        st.info(INSTRUCTIONS.format(mb=MAX_BYTES // 2**20))
        return
    try:
        model = load_cached(ref.load_uri, tracking)
    except Exception as exc:
        logger.exception("loading %s failed", ref.load_uri)
        st.error(f"The model {ref.label()} could not be loaded ({type(exc).__name__}: {exc}).")
        return
    render_result(upload.getvalue(), upload.name, model)


def main_app(argv: list[str] | None = None) -> int:
    """``busi app``: this page under ``streamlit run`` on 127.0.0.1 (replaces the process,
    so stopping it stops Streamlit)."""
    from busi.cli import parser_for

    parser = parser_for("app")
    parser.add_argument(
        "--port", type=int, default=8501, help="the TCP port on 127.0.0.1 (default: %(default)s)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 only inside a container behind its own network)",
    )
    parser.add_argument("--model-uri", default=None, help=f"default {DEFAULT_MODEL_URI}")
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.model_uri:
        env["BUSI_MODEL_URI"] = args.model_uri
    if args.tracking_uri:
        env["MLFLOW_TRACKING_URI"] = args.tracking_uri
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(Path(__file__).resolve()),
        "--server.address",
        args.host,
        "--server.port",
        str(args.port),
        "--server.headless",
        "true",
        "--server.maxUploadSize",
        str(MAX_BYTES // 2**20),
        # Watching every imported file (TensorFlow's included) costs a core on this machine.
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--client.toolbarMode",
        "viewer",  # no "Deploy" button on a local research tool
    ]
    sys.stdout.flush()
    os.execve(sys.executable, command, env)
    return 0  # not reached


if __name__ == "__main__":
    page()
