"""serve_model: the champion ``busi-pipeline`` behind a small REST API (``busi serve``), and
the model loading that ``busi predict`` and the Streamlit app share.

The server follows the registry: every ``--refresh-seconds`` it resolves the alias of
``--model-uri`` (default ``models:/busi-pipeline@champion``) to a version, and when the
version changed it loads the new one first and then swaps it in, so a promotion or a
rollback reaches serving without a restart. If the new version cannot be loaded, the old
one keeps serving and the reason is logged (and shown by ``GET /version``). Each version is
loaded once; the last two stay in memory, so a rollback is instant.

Endpoints (127.0.0.1 only):

- ``POST /predict``: one image as the raw body (``Content-Type: image/png``,
  ``image/jpeg`` or ``application/octet-stream``), one or more files as
  ``multipart/form-data``, or JSON ``{"image": "<base64>"}`` / ``{"images": [...]}``.
  Answer: ``{"model": {"name", "version", "alias"}, "predictions": [{"index",
  "filename", "class", "prob_benign", "prob_malignant", "prob_normal", "lesion_found",
  "lesion_area", "box", "mask_png", "height", "width"}, ...]}``. ``box`` is
  [top, left, bottom, right] (bottom/right exclusive) and ``mask_png`` a base64 PNG.
  Errors are JSON ``{"detail": "..."}``: 400 for an image that cannot be used (the
  reason, e.g. ``image 0: unsupported_format: content is unknown, expected one of PNG,
  JPEG``), 413 above ``--max-bytes``, 415 for any other content type, 503 while no
  model is loaded.
- ``GET /health``: 200 with the model's name and version once loaded, 503 before.
- ``GET /version``: what is served, the URI asked for, when it was loaded and checked,
  and the last load or registry error.

Example::

    busi serve --port 5001 &
    curl -s -H 'Content-Type: image/png' --data-binary @scan.png http://127.0.0.1:5001/predict
    curl -s -F file=@scan.png http://127.0.0.1:5001/predict
    curl -s -H 'Content-Type: application/json' \\
         -d "{\\"image\\": \\"$(base64 -w0 scan.png)\\"}" http://127.0.0.1:5001/predict

Settings: ``MLFLOW_TRACKING_URI`` (or ``--tracking-uri``) says where the registry is.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's ``Request``
# annotation at run time.
import argparse
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from busi.errors import BusiError
from busi.model.pipeline_model import InvalidImageError, image_bytes
from busi.registry import CHAMPION, PIPELINE_MODEL

logger = logging.getLogger(__name__)

DEFAULT_MODEL_URI = f"models:/{PIPELINE_MODEL}@{CHAMPION}"
DEFAULT_PORT = 5001
DEFAULT_REFRESH_SECONDS = 30.0
MAX_BYTES = 20 * 1024 * 1024
# A body over the limit is still read (and thrown away) up to this size before the 413:
# closing a connection the client is still sending on resets it, and the client would
# see "connection reset" instead of the answer. Past this size the connection is cut.
DRAIN_BYTES = 256 * 1024 * 1024
# Images in one request: bounds the memory a single request can take while decoding.
MAX_IMAGES = 32
RAW_TYPES = ("image/png", "image/jpeg", "image/jpg", "application/octet-stream")

_ALIAS_URI = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)/?$")
_VERSION_URI = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


@dataclass(frozen=True)
class ModelRef:
    """A model URI resolved to what will be loaded: ``models:/<name>/<version>`` for a
    registered model, the URI itself otherwise (a run or a local folder)."""

    uri: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None

    @property
    def load_uri(self) -> str:
        if self.name and self.version:
            return f"models:/{self.name}/{self.version}"
        return self.uri

    def describe(self) -> dict[str, str | None]:
        return {"name": self.name, "version": self.version, "alias": self.alias}

    def label(self) -> str:
        if not self.name:
            return self.uri
        alias = f" ({self.alias})" if self.alias else ""
        return f"{self.name} v{self.version}{alias}"


def needs_registry(model_uri: str) -> bool:
    return model_uri.startswith(("models:/", "runs:/"))


def resolve_model(model_uri: str, client=None) -> ModelRef:
    """The version an alias points at now. ``client`` is an MlflowClient (needed only for
    an alias)."""
    if match := _VERSION_URI.match(model_uri):
        return ModelRef(model_uri, match["name"], match["version"])
    if match := _ALIAS_URI.match(model_uri):
        from mlflow.exceptions import MlflowException

        name, alias = match["name"], match["alias"]
        try:
            mv = client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            raise BusiError(
                f"{name} has no version with the alias '{alias}' in the registry at "
                f"{client.tracking_uri}: register and promote one first (`busi register-model`, "
                "`busi promote-model`)"
            ) from exc
        return ModelRef(model_uri, name, str(mv.version), alias)
    return ModelRef(model_uri)


def registry_client(model_uri: str, tracking_uri: str | None = None):
    """A checked MlflowClient when the URI needs the registry, else None."""
    if not needs_registry(model_uri):
        return None
    from busi import registry

    return registry.client(tracking_uri)


def load_pyfunc(uri: str, tracking_uri: str | None = None):
    """The pyfunc at ``uri``; ``models:/`` URIs are read from ``tracking_uri``'s registry
    when given (else from the one set last, as ``registry.client`` does)."""
    import mlflow.pyfunc

    # Versions logged before the library moved to busi/ name their class
    # components.pipeline_model.BusiPipeline: with that module imported they run this code,
    # as they did then, rather than the copy logged with them (components/pipeline_model.py).
    import components.pipeline_model  # noqa: F401

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    started = time.perf_counter()
    model = mlflow.pyfunc.load_model(uri)
    logger.info("loaded %s in %.1f s", uri, time.perf_counter() - started)
    return model


def load_resolved(model_uri: str, tracking_uri: str | None = None) -> tuple[ModelRef, Any]:
    """Resolve and load once (the command line's case)."""
    client = registry_client(model_uri, tracking_uri)
    ref = resolve_model(model_uri, client)
    return ref, load_pyfunc(ref.load_uri, client.tracking_uri if client else None)


def jsonable(value):
    """Plain Python values for json.dumps (numpy scalars and arrays included)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return value.item()
    return value


def predict_rows(model, cells: list[bytes]) -> list[dict]:
    """The pyfunc's output rows for image bytes, as plain dicts."""
    import pandas as pd

    frame = model.predict(pd.DataFrame({"image": cells}))
    return [jsonable(row) for row in frame.to_dict(orient="records")]


@dataclass(frozen=True)
class Loaded:
    ref: ModelRef
    model: Any
    loaded_at: float


class ModelHolder:
    """The model being served, swapped atomically when the alias moves.

    ``refresh`` resolves the URI and loads a new version beside the old one; only a model
    that loaded is swapped in. ``predict`` runs one request at a time (a lock: TensorFlow
    on two cores gains nothing from concurrent calls)."""

    def __init__(
        self,
        model_uri: str = DEFAULT_MODEL_URI,
        tracking_uri: str | None = None,
        *,
        load: Callable[[str], Any] = load_pyfunc,
        keep: int = 2,
    ):
        self.model_uri = model_uri
        self.tracking_uri = tracking_uri
        self._load = load
        self._keep = keep
        self._client = None
        self._cache: OrderedDict[str, Loaded] = OrderedDict()
        self._refresh_lock = threading.Lock()
        self._predict_lock = threading.Lock()
        self.current: Loaded | None = None
        self.last_check: float | None = None
        self.last_error: str | None = None

    def connect(self) -> None:
        """Check the registry now (BusiError with what to start when it does not answer)."""
        if self._client is None and needs_registry(self.model_uri):
            self._client = registry_client(self.model_uri, self.tracking_uri)

    def _resolve(self) -> ModelRef:
        self.connect()
        return resolve_model(self.model_uri, self._client)

    def _fail(self, message: str) -> None:
        if message != self.last_error:  # once per distinct problem, not every interval
            logger.warning("%s", message)
        self.last_error = message

    def refresh(self) -> bool:
        """Follow the alias; True when another version was swapped in."""
        with self._refresh_lock:
            self.last_check = time.time()
            try:
                ref = self._resolve()
            except Exception as exc:  # registry down, alias missing: keep what we have
                self._fail(f"cannot resolve {self.model_uri}: {exc}")
                return False
            current = self.current
            if current is not None and current.ref.load_uri == ref.load_uri:
                self.last_error = None
                return False
            loaded = self._cache.get(ref.load_uri)
            if loaded is None:
                try:
                    loaded = Loaded(ref, self._load(ref.load_uri), time.time())
                except Exception as exc:  # keep serving the old one; retried next check
                    message = f"loading {ref.label()} failed: {exc}"
                    if message != self.last_error:
                        still = current.ref.label() if current else "nothing"
                        logger.exception("%s; still serving %s", message, still)
                    self.last_error = message
                    return False
                self._cache[ref.load_uri] = loaded
            self._cache.move_to_end(ref.load_uri)
            while len(self._cache) > self._keep:
                self._cache.popitem(last=False)
            self.current = Loaded(ref, loaded.model, loaded.loaded_at)  # the atomic swap
            self.last_error = None
            logger.info(
                "now serving %s (was %s)", ref.label(), current.ref.label() if current else "none"
            )
            return True

    def predict(self, cells: list[bytes]) -> tuple[ModelRef, list[dict]]:
        loaded = self.current  # one model for the whole request, even if a swap happens now
        if loaded is None:
            raise ModelUnavailable(self.last_error or "the model is still loading")
        with self._predict_lock:
            return loaded.ref, predict_rows(loaded.model, cells)

    def status(self) -> dict:
        loaded = self.current
        return {
            **(loaded.ref.describe() if loaded else {"name": None, "version": None, "alias": None}),
            "model_uri": self.model_uri,
            "loaded_at": loaded.loaded_at if loaded else None,
            "last_check": self.last_check,
            "last_error": self.last_error,
        }


class ModelUnavailable(RuntimeError):
    """No model is loaded yet (or the first load failed)."""


class PayloadError(ValueError):
    """A request the server refuses; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> str:
    """The media type if the server takes it, else PayloadError 415."""
    kind = media_type(content_type)
    if kind not in (*RAW_TYPES, "multipart/form-data", "application/json"):
        raise PayloadError(
            415,
            f"unsupported Content-Type {kind or '(none)'!r}: send a PNG/JPEG as the body "
            "(image/png, image/jpeg, application/octet-stream), as multipart/form-data, or "
            'JSON {"image": "<base64>"}',
        )
    return kind


async def read_body(chunks, max_bytes: int, drain_bytes: int = DRAIN_BYTES) -> bytes:
    """The request body from its chunks, or PayloadError 413 once it is over ``max_bytes``:
    after reading the rest (discarded, at most ``drain_bytes`` in all), so that the client,
    which is still sending, can read the answer."""
    body, size = bytearray(), 0
    async for chunk in chunks:
        size += len(chunk)
        if size <= max_bytes:
            body += chunk
        elif size > drain_bytes:
            break
    if size > max_bytes:
        raise PayloadError(
            413,
            f"the body is over the limit of {max_bytes} bytes"
            f"{f' ({size} bytes read)' if size <= drain_bytes else ''}: send one image of "
            "at most that size per request (the server's --max-bytes)",
        )
    return bytes(body)


def images_from_payload(content_type: str | None, body: bytes) -> list[tuple[str | None, bytes]]:
    """(file name, image bytes) for each image in a request body, or PayloadError."""
    kind = check_content_type(content_type)
    if not body:
        raise PayloadError(400, "empty body: send a PNG or JPEG image")
    if kind in RAW_TYPES:
        images = [(None, body)]
    elif kind == "multipart/form-data":
        images = _multipart_images(content_type or "", body)
    else:
        images = _json_images(body)
    if not images:
        raise PayloadError(400, "no image in the request")
    if len(images) > MAX_IMAGES:
        raise PayloadError(413, f"{len(images)} images in one request; at most {MAX_IMAGES}")
    return images


def _multipart_images(content_type: str, body: bytes) -> list[tuple[str | None, bytes]]:
    # The standard library's MIME parser works on the bytes in memory: nothing is spooled.
    from email import policy
    from email.parser import BytesParser

    header = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise PayloadError(400, "a multipart/form-data body needs its boundary and parts")
    images = []
    for part in message.iter_parts():
        name = part.get_filename() or part.get_param("name", header="content-disposition")
        images.append((name, part.get_payload(decode=True) or b""))
    return images


def _json_images(body: bytes) -> list[tuple[str | None, bytes]]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(400, f"the body is not valid JSON: {exc}") from exc
    if isinstance(payload, dict) and isinstance(payload.get("image"), str):
        values = [payload["image"]]
    elif isinstance(payload, dict) and isinstance(payload.get("images"), list):
        values = payload["images"]
    else:
        raise PayloadError(
            400, 'JSON must be {"image": "<base64>"} or {"images": ["<base64>", ...]}'
        )
    images = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise PayloadError(400, f"image {index}: must be a base64 string")
        try:
            images.append((None, image_bytes(value)))
        except InvalidImageError as exc:
            raise PayloadError(400, f"image {index}: {exc}") from exc
    return images


def create_app(holder: ModelHolder, *, max_bytes: int = MAX_BYTES, refresh_seconds=None):
    """The FastAPI app. With ``refresh_seconds`` a background thread follows the alias
    (the first check runs at start-up, in the background: /health says 503 until then)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(_app):
        stop = threading.Event()
        thread = None
        if refresh_seconds is not None:
            thread = threading.Thread(
                target=_follow, args=(holder, refresh_seconds, stop), name="model-refresh"
            )
            thread.daemon = True
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)

    app = FastAPI(title="busi-pipeline", lifespan=lifespan)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"detail": message}, status_code=status)

    @app.get("/health")
    def health():
        loaded = holder.current
        if loaded is None:
            return JSONResponse(
                {"status": "unavailable", "detail": holder.last_error or "loading"},
                status_code=503,
            )
        return {"status": "ok", "model": loaded.ref.describe()}

    @app.get("/version")
    def version():
        status = holder.status()
        return JSONResponse(status, status_code=200 if holder.current else 503)

    @app.post("/predict")
    async def predict(request: Request):
        content_type = request.headers.get("content-type")
        try:  # the type first: nothing is read of a body that would be refused anyway
            check_content_type(content_type)
        except PayloadError as exc:
            return error(exc.status, str(exc))
        declared = request.headers.get("content-length")
        # A client waiting for "100 Continue" has sent nothing yet: answer at once. Any other
        # is sending already, and read_body reads what it sends before the 413.
        if (
            declared
            and declared.isdigit()
            and int(declared) > max_bytes
            and "100-continue" in request.headers.get("expect", "").lower()
        ):
            return error(
                413,
                f"the body has {declared} bytes; the limit is {max_bytes} (the server's "
                "--max-bytes): send one image of at most that size per request",
            )
        try:
            body = await read_body(request.stream(), max_bytes)
            images = images_from_payload(content_type, body)
            ref, rows = await run_in_threadpool(holder.predict, [data for _, data in images])
        except PayloadError as exc:
            return error(exc.status, str(exc))
        except InvalidImageError as exc:
            return error(400, str(exc))
        except ModelUnavailable as exc:
            return error(503, f"no model loaded: {exc}")
        predictions = [
            {"index": i, "filename": name, **row}
            for i, ((name, _), row) in enumerate(zip(images, rows, strict=True))
        ]
        return {"model": ref.describe(), "predictions": predictions}

    @app.exception_handler(Exception)
    async def unexpected(_request, exc):  # a message, never a traceback, for the client
        logger.exception("request failed")
        return error(500, f"internal error ({type(exc).__name__}); see the server log")

    return app


def _follow(holder: ModelHolder, interval: float, stop: threading.Event) -> None:
    while True:
        try:
            holder.refresh()
        except Exception:  # the thread must outlive any surprise
            logger.exception("model refresh failed")
        if stop.wait(interval):
            return


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-uri",
        default=DEFAULT_MODEL_URI,
        help="the MLflow model to use (default: %(default)s)",
    )
    parser.add_argument("--tracking-uri", default=None, help="default $MLFLOW_TRACKING_URI")


def main_serve(argv: list[str] | None = None) -> int:
    from busi.cli import parser_for

    parser = parser_for("serve")
    _add_model_args(parser)
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="the TCP port on 127.0.0.1 (default: %(default)s)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (0.0.0.0 only inside a container behind its own network)",
    )
    parser.add_argument(
        "--refresh-seconds",
        type=float,
        default=DEFAULT_REFRESH_SECONDS,
        help="how often to check which version the alias points at",
    )
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="request body limit")
    args = parser.parse_args(argv)
    if args.refresh_seconds <= 0:
        parser.error("--refresh-seconds must be positive")
    import uvicorn

    holder = ModelHolder(args.model_uri, args.tracking_uri)
    holder.connect()  # an unreachable registry fails here, not in the background
    app = create_app(holder, max_bytes=args.max_bytes, refresh_seconds=args.refresh_seconds)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
