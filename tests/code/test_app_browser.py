"""The Streamlit page in a real browser: `busi app` on a free port with the smoke champion,
Debian's Chromium driven headless by Playwright: upload a PNG, see the class and the overlay
(screenshot in tests/artifacts/app_result.png), then upload a corrupt file and see the error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busi.data.synthetic import synth_pair
from tests.conftest import REPO_ROOT, free_port, service_process

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
# What NOTES.md found to work for Debian's Chromium in a container without a GPU.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"


def _ensure_chromium() -> None:
    """Install Debian's chromium when missing and we may (root, apt); else skip, saying why."""
    if CHROMIUM.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is absent and cannot be installed here (needs root and apt-get)")
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
    install = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, text=True, timeout=600
    )
    if install.returncode != 0 or not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is absent and `apt-get install chromium` failed: {install.stderr[-500:]}"
        )


@pytest.fixture(scope="module")
def browser():
    _ensure_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def app_url(smoke_champion, tmp_path_factory):
    """`busi app` as its own process (the command replaces itself with streamlit run)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "components", "app", "--port", str(port)]
    command += ["--tracking-uri", smoke_champion.tracking_uri]
    log_path = tmp_path_factory.mktemp("app") / "app.log"
    with service_process(command, f"{url}/_stcore/health", log_path, env=smoke_champion.env):
        yield url, log_path


def test_upload_shows_result_then_a_corrupt_file_shows_an_error(browser, app_url, tmp_path):
    url, log_path = app_url
    scan = tmp_path / "scan.png"
    Image.fromarray(synth_pair(np.random.default_rng(7), "malignant", 160, 200)[0]).save(scan)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)

    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    try:
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_text("not a diagnostic device").wait_for(timeout=60_000)
        page.get_by_text("Upload a breast-ultrasound image").wait_for(timeout=60_000)

        page.set_input_files("input[type=file]", str(scan))
        # The first upload loads the model (TensorFlow import included): allow for it.
        page.get_by_text("Predicted class:").wait_for(timeout=180_000)
        label = page.get_by_text("Predicted class:").inner_text()
        assert label.split(":")[1].strip() in ("benign", "malignant", "normal")
        overlay = page.locator("img[alt=overlay]")
        overlay.wait_for(timeout=90_000)
        page.wait_for_function(
            "() => { const i = document.querySelector('img[alt=overlay]');"
            " return i && i.complete && i.naturalWidth > 0; }",
            timeout=90_000,
        )
        assert overlay.evaluate("i => i.naturalWidth") == 200
        assert page.get_by_text("malignant:").count() >= 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # Streamlit scrolls inside its own container: the tall viewport holds the whole result.
        page.screenshot(path=str(ARTIFACTS / "app_result.png"), full_page=True)

        page.set_input_files("input[type=file]", str(corrupt))
        page.get_by_text("cannot be used").wait_for(timeout=60_000)
        assert "decode_error" in page.locator("[data-testid=stAlert]").all_inner_texts()[-1]
        assert page.locator("img[alt=overlay]").count() == 0
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(log_path.read_text()[-3000:])
        raise
    finally:
        page.close()


@pytest.fixture(scope="module")
def mlflow_ui(smoke_champion, tmp_path_factory):
    """An MLflow server (UI included) on the smoke champion's store, where register_model
    wrote the model card as the version's description."""
    port = free_port()
    base = tmp_path_factory.mktemp("mlflow-ui")
    command = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", smoke_champion.tracking_uri]
    command += ["--artifacts-destination", str(base / "artifacts")]
    url = f"http://127.0.0.1:{port}"
    with service_process(command, f"{url}/health", base / "server.log", timeout=90):
        yield url, smoke_champion.version


def test_mlflow_ui_shows_the_model_card_on_the_version_page(browser, mlflow_ui):
    url, version = mlflow_ui
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    try:
        page.goto(f"{url}/#/models/busi-pipeline/versions/{version}", wait_until="domcontentloaded")
        # The description is rendered Markdown: headings of the card, not its source.
        page.get_by_role("heading", name="Intended use").wait_for(timeout=90_000)
        page.get_by_role("heading", name="Known failure modes").wait_for(timeout=30_000)
        assert page.get_by_text("not a diagnostic device").count() >= 1
        assert page.get_by_text("## Intended use").count() == 0
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "mlflow_model_card.png"), full_page=True)
    finally:
        page.close()
