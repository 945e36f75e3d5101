"""busi serve and busi predict: the request formats and their errors (in process, with a
stand-in model), then the real server process on the smoke champion: predictions, 4xx for
bad payloads, a promotion and a rollback followed without a restart, and the command line."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import busi.serving.server as sm
from busi.data.preprocess import CLASSES
from busi.data.synthetic import synth_pair
from tests.conftest import free_port, service_process

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def tiny_png() -> bytes:
    """A 1x1 PNG: decodable, but below validate-data's min_side."""
    buf = io.BytesIO()
    Image.new("L", (1, 1), 128).save(buf, format="PNG")
    return buf.getvalue()


def png(seed: int = 0, cls: str = "benign", h: int = 96, w: int = 128) -> bytes:
    image = synth_pair(np.random.default_rng(seed), cls, h, w)[0]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# --- in process: payload parsing, the holder, the app with a stand-in model -----------------


class EchoModel:
    """Stands in for the pyfunc: decodes like it does, answers 'normal'."""

    def __init__(self, tag: str = "a"):
        self.tag = tag

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        from busi.model.pipeline_model import decode_upload, image_bytes

        rows = []
        for row, cell in enumerate(frame["image"]):
            try:
                image = decode_upload(image_bytes(cell))
            except sm.InvalidImageError as exc:
                raise sm.InvalidImageError(f"image {row}: {exc}") from exc
            rows.append(
                {
                    "class": "normal",
                    "prob_benign": 0.25,
                    "prob_malignant": np.float64(0.25),
                    "prob_normal": 0.5,
                    "lesion_found": np.bool_(False),
                    "lesion_area": 0.0,
                    "box": [0, 0, *image.shape],
                    "mask_png": self.tag,
                    "height": image.shape[0],
                    "width": image.shape[1],
                }
            )
        return pd.DataFrame(rows)


@pytest.fixture
def fake_registry(monkeypatch):
    """resolve_model answers the version in ``state['version']``; loads are counted."""
    state = {"version": "1", "loads": [], "fail": set()}

    def resolve(uri, client=None):
        if state["version"] is None:
            raise sm.BusiError("registry down")
        return sm.ModelRef(uri, "busi-pipeline", state["version"], "champion")

    def load(uri):
        state["loads"].append(uri)
        if uri in state["fail"]:
            raise OSError("artifact store went away")
        return EchoModel(uri)

    monkeypatch.setattr(sm, "resolve_model", resolve)
    monkeypatch.setattr(sm, "registry_client", lambda *a, **k: None)
    state["holder"] = sm.ModelHolder(load=load)
    return state


def test_holder_swaps_on_a_new_version_and_loads_each_version_once(fake_registry):
    holder = fake_registry["holder"]
    assert holder.refresh()
    assert holder.current.ref.version == "1"
    assert not holder.refresh()  # same version: nothing loaded
    fake_registry["version"] = "2"
    assert holder.refresh()
    assert holder.current.ref.version == "2"
    fake_registry["version"] = "1"  # rollback: from the cache
    assert holder.refresh()
    assert holder.current.ref.version == "1"
    assert fake_registry["loads"] == ["models:/busi-pipeline/1", "models:/busi-pipeline/2"]


def test_holder_keeps_serving_when_loading_or_resolving_fails(fake_registry, caplog):
    holder = fake_registry["holder"]
    holder.refresh()
    fake_registry["version"] = "2"
    fake_registry["fail"].add("models:/busi-pipeline/2")
    assert not holder.refresh()
    assert holder.current.ref.version == "1"
    assert "went away" in holder.last_error
    assert "still serving busi-pipeline v1" in caplog.text
    fake_registry["version"] = None
    assert not holder.refresh()
    assert holder.current.ref.version == "1"
    assert "registry down" in holder.status()["last_error"]


@pytest.fixture
def client(fake_registry):
    from fastapi.testclient import TestClient

    fake_registry["holder"].refresh()
    app = sm.create_app(fake_registry["holder"], max_bytes=50_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_the_three_request_formats(client):
    data = png()
    raw = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    multi = client.post(
        "/predict", files=[("file", ("a.png", data, "image/png")), ("f2", ("b.png", data))]
    )
    one = client.post("/predict", json={"image": base64.b64encode(data).decode()})
    many = client.post("/predict", json={"images": [base64.b64encode(data).decode()] * 2})
    for response, count in ((raw, 1), (multi, 2), (one, 1), (many, 2)):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "busi-pipeline", "version": "1", "alias": "champion"}
        assert len(body["predictions"]) == count
        assert body["predictions"][0]["height"] == 96
        assert body["predictions"][0]["width"] == 128
    assert [p["filename"] for p in multi.json()["predictions"]] == ["a.png", "b.png"]
    assert client.get("/health").json()["model"]["version"] == "1"


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"hello", "headers": {"Content-Type": "image/png"}}, 400, "unsupported"),
        ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty body"),
        ({"content": PNG_HEADER + b"\0" * 30, "headers": {"Content-Type": "image/png"}}, 400, ""),
        ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
        ({"content": b"x"}, 415, "Content-Type"),
        ({"content": b"x" * 60_000, "headers": {"Content-Type": "image/png"}}, 413, "limit"),
        ({"json": {"image": "not base64 !!"}}, 400, "base64"),
        ({"json": {"picture": "x"}}, 400, '{"image"'),
        ({"json": {"images": [1]}}, 400, "base64 string"),
        ({"content": b"{", "headers": {"Content-Type": "application/json"}}, 400, "JSON"),
        ({"json": {"images": ["aGk="] * 40}}, 413, "at most"),
        ({"files": {"file": ("a.txt", b"just text", "text/plain")}}, 400, "unsupported_format"),
        ({"content": tiny_png(), "headers": {"Content-Type": "image/png"}}, 400, "too_small"),
    ],
)
def test_bad_payloads_get_a_4xx_with_a_message(client, kwargs, status, message):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_no_model_yet_is_503_not_500(fake_registry):
    from fastapi.testclient import TestClient

    fake_registry["version"] = None
    fake_registry["holder"].refresh()
    with TestClient(sm.create_app(fake_registry["holder"])) as c:
        assert c.get("/health").status_code == 503
        assert c.get("/version").status_code == 503
        r = c.post("/predict", content=png(), headers={"Content-Type": "image/png"})
        assert r.status_code == 503
        assert "registry down" in r.json()["detail"]


def test_model_uri_forms():
    assert sm.resolve_model("models:/busi-pipeline/3").load_uri == "models:/busi-pipeline/3"
    assert sm.resolve_model("/some/folder").load_uri == "/some/folder"
    assert not sm.needs_registry("/some/folder")


# --- the real server process on the smoke champion -------------------------------------------


@pytest.fixture(scope="module")
def server(fresh_smoke_champion, tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "components", "serve", "--port", str(port)]
    command += ["--tracking-uri", fresh_smoke_champion.tracking_uri, "--refresh-seconds", "1"]
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with service_process(
        command, f"{url}/health", log_path, env=fresh_smoke_champion.env, timeout=180
    ) as proc:
        yield {"url": url, "proc": proc, "store": fresh_smoke_champion, "log": log_path}


def _check_prediction(body: dict, version: str) -> dict:
    assert body["model"] == {"name": "busi-pipeline", "version": version, "alias": "champion"}
    (pred,) = body["predictions"]
    assert pred["class"] in CLASSES
    probs = [pred[f"prob_{c}"] for c in CLASSES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert pred["height"] == 96
    assert pred["width"] == 128
    assert len(pred["box"]) == 4
    return pred


@pytest.mark.slow
def test_server_predicts_raw_multipart_and_base64(server):
    import requests

    url, data = server["url"] + "/predict", png(seed=4, cls="malignant")
    raw = requests.post(url, data=data, headers={"Content-Type": "image/png"}, timeout=60)
    multi = requests.post(url, files={"file": ("scan.png", data, "image/png")}, timeout=60)
    b64 = requests.post(url, json={"image": base64.b64encode(data).decode()}, timeout=60)
    preds = [_check_prediction(r.json(), "1") for r in (raw, multi, b64)]
    assert preds[0] == {**preds[1], "filename": None} == {**preds[2], "filename": None}


@pytest.mark.slow
def test_server_refuses_bad_payloads_with_4xx(server):
    import requests

    url = server["url"] + "/predict"
    text = requests.post(url, data=b"a text file\n", headers={"Content-Type": "image/png"})
    assert text.status_code == 400
    assert "unsupported_format" in text.json()["detail"]
    empty = requests.post(url, data=b"", headers={"Content-Type": "image/png"})
    assert empty.status_code == 400
    assert "empty" in empty.json()["detail"]
    wrong = requests.post(url, data=png(), headers={"Content-Type": "text/plain"})
    assert wrong.status_code == 415
    assert "image/png" in wrong.json()["detail"]
    tiny = requests.post(url, data=tiny_png(), headers={"Content-Type": "image/png"})
    assert tiny.status_code == 400
    assert "too_small: 1x1 is below 64 px" in tiny.json()["detail"]
    assert server["proc"].poll() is None


def _read_response(sock) -> bytes:
    """One HTTP response, headers and body (a single recv may stop after the headers)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.slow
def test_server_answers_an_oversized_body_with_413_not_a_reset(server):
    """30 MB, over the 20 MB limit, from urllib (which asks to close the connection after the
    answer: the case where replying before reading the body reset the connection)."""
    import socket
    import urllib.error
    import urllib.request

    url = server["url"] + "/predict"
    body = b"\0" * (30 * 2**20)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    assert "over the limit of 20971520 bytes" in json.loads(refused.value.read())["detail"]
    # A client that waits for "100 Continue" gets the 413 before sending its body.
    port = int(server["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            + f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        answer = _read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"the body has 31457280 bytes" in answer
    assert server["proc"].poll() is None


@pytest.mark.slow
def test_server_follows_a_promotion_and_a_rollback_without_restart(server):
    import requests

    store, url = server["store"], server["url"]

    def wait_for_version(version: str, timeout: float = 90.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if requests.get(f"{url}/version", timeout=5).json()["version"] == version:
                return time.monotonic() - started
            time.sleep(0.25)
        pytest.fail(f"/version did not reach {version}; log:\n{server['log'].read_text()[-3000:]}")

    assert requests.get(f"{url}/version", timeout=5).json()["version"] == "1"
    second = store.register_new(margin=0.3)
    assert second == 2
    store.promote(second)
    wait_for_version("2")
    answer = requests.post(
        f"{url}/predict", data=png(), headers={"Content-Type": "image/png"}, timeout=60
    )
    _check_prediction(answer.json(), "2")
    store.promote(1)  # rollback: the old version is still in memory
    assert wait_for_version("1") < 10
    assert server["proc"].poll() is None  # the same process all along


# --- busi predict --------------------------------------------------------------------------


@pytest.mark.slow
def test_busi_predict_prints_good_files_and_flags_bad_ones(fresh_smoke_champion, tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(png(seed=2))
    bad.write_text("not an image")
    out = tmp_path / "masks"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "components",
            "predict",
            str(good),
            str(bad),
            str(tmp_path / "missing.png"),
            "--model-uri",
            "models:/busi-pipeline/1",
            "--tracking-uri",
            fresh_smoke_champion.tracking_uri,
            "--out",
            str(out),
        ],
        env=fresh_smoke_champion.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert line["file"] == str(good)
    assert line["class"] in CLASSES
    assert "mask_png" not in line
    assert line["model"]["version"] == "1"
    with Image.open(line["mask_file"]) as mask:
        assert mask.size == (128, 96)
    assert f"{bad}: error: unsupported_format" in proc.stderr
    assert "missing.png: error: cannot read" in proc.stderr


def test_predict_lines_leave_the_mask_out_unless_asked():
    from pathlib import Path

    from busi.serving.predict import mask_name, result_line

    row = {"class": "benign", "mask_png": "iVBOR"}
    assert "mask_png" not in result_line("a.png", row, {}, with_mask=False)
    assert result_line("a.png", row, {}, with_mask=True)["mask_png"] == "iVBOR"
    used: set[str] = set()
    names = [mask_name(Path(p), used) for p in ("x/a.png", "y/a.png", "b.jpg")]
    assert names == ["a_mask.png", "a_2_mask.png", "b_mask.png"]
