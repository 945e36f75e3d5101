"""The data version: the ``dvc`` commands in one repository and the version data.dvc records."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from busi.errors import BusiError

DATA_DIR = Path("data/busi")


DVC_FILE = Path("data.dvc")


REMOTE_NAME = "storage"


def default_remote_url() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "busi-pipeline" / "dvc-remote")


class Dvc:
    """Runs ``dvc`` in one repository, with analytics off; errors become BusiError."""

    def __init__(self, repo: Path):
        self.repo = Path(repo)
        self.env = {**os.environ, "DVC_NO_ANALYTICS": "1"}

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "dvc", *args]
        proc = subprocess.run(cmd, cwd=self.repo, env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise BusiError(f"`dvc {' '.join(args)}` failed:\n{proc.stderr.strip() or proc.stdout}")
        return proc

    def configure_remote(self, url: str, endpoint_url: str | None) -> None:
        """Make ``url`` the default remote in the per-machine config (.dvc/config.local)."""
        if "://" not in url:
            path = Path(url).expanduser().resolve()
            if path.is_relative_to(self.repo.resolve()):
                raise BusiError(
                    f"the DVC remote {path} lies inside the work tree; choose a folder outside it"
                )
            path.mkdir(parents=True, exist_ok=True)
            url = str(path)
        self("remote", "add", "--local", "--default", "--force", REMOTE_NAME, url)
        if endpoint_url:
            self("remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint_url)

    def default_remote(self) -> str | None:
        proc = self("remote", "default", check=False)
        name = proc.stdout.strip()
        return name if proc.returncode == 0 and name else None


def require_recorded(dvc: Dvc, data_dir: Path, then: str = "") -> None:
    """Refuse to touch ``data_dir`` while it holds changes that data.dvc does not record."""
    status = dvc("status", str(DVC_FILE), "--json").stdout.strip()
    if status not in ("{}", ""):
        raise BusiError(
            f"{data_dir} has changes not recorded in {DVC_FILE} ({status}); "
            f"run `dvc commit {DVC_FILE}` to keep them or `dvc checkout {DVC_FILE}` to drop "
            f"them{then}"
        )


def recorded_version(dvc_file: Path) -> str | None:
    if not dvc_file.is_file():
        return None
    outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")
