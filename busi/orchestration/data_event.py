"""The data version on the Asset event ``busi_data``: busi_new_data's event carries the new
version and its ``data.dvc`` (a few lines), so that, with DVC sync (``BUSI_DVC_SYNC=1``:
work trees of their own, nothing shared but the DVC remote, the MLflow server and Airflow's
metadata database), a task on any worker knows the newest version without a git push:

- ``busi_training``: the first task of a run that an Asset event triggered writes the
  newest triggering event's ``data.dvc`` into its work tree before the MLflow parent run is
  made (its ``data_version`` tag) and the stage pulls the data; the later tasks get it from
  the run state (``busi.orchestration.run_state``);
- ``busi_new_data``: before merging, the work tree takes the ``data.dvc`` of the newest
  ``busi_data`` event and pulls that version (``dvc pull data.dvc``), so a merge on one
  worker builds on the merge another worker made, and no merged image drops out of the
  next version.

Without DVC sync (one shared workspace) nothing here runs: the workspace's own ``data.dvc``
is the newest. Pure helpers plus ``take_data_version`` (files and ``dvc``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

DVC_FILE = "data.dvc"


def event_extra(version: str, dvc_text: str) -> dict[str, str]:
    """The extra of busi_new_data's Asset event: the new data version and its data.dvc."""
    return {"data_version": version, "data_dvc": dvc_text}


def _extra(event) -> dict:
    extra = event.get("extra") if isinstance(event, dict) else getattr(event, "extra", None)
    return extra or {}


def _timestamp(event):
    return event.get("timestamp") if isinstance(event, dict) else getattr(event, "timestamp", None)


def newest_data_dvc(events: Iterable) -> str | None:
    """The ``data.dvc`` text of the newest event that carries one (Airflow asset events, or
    dicts with ``extra`` and ``timestamp``); None when none does (a run triggered by hand,
    or events from before events carried it)."""
    carrying = [e for e in events if _extra(e).get("data_dvc")]
    if not carrying:
        return None
    return _extra(max(carrying, key=_timestamp))["data_dvc"]


def write_data_dvc(ws: Path, dvc_text: str | None) -> bool:
    """Put ``dvc_text`` in ``ws``/data.dvc; True when that changed the file."""
    if not dvc_text:
        return False
    path = Path(ws) / DVC_FILE
    if path.is_file() and path.read_text() == dvc_text:
        return False
    path.write_text(dvc_text)
    return True


def read_data_dvc(ws: Path) -> str | None:
    path = Path(ws) / DVC_FILE
    return path.read_text() if path.is_file() else None


def _pull(ws: Path, remote: str | None, endpoint: str | None) -> None:
    from busi.data.versions import Dvc

    dvc = Dvc(ws)
    if remote:
        dvc.configure_remote(remote, endpoint)
    dvc("pull", DVC_FILE)


def pull_if_changed(ws: Path, before: str | None, remote: str | None, endpoint: str | None):
    """``dvc pull data.dvc`` when the work tree's data.dvc is no longer ``before`` (a task
    took the event's or the run state's): data/busi must follow it, or a stage would hash and
    use the files of the version the work tree held before. True when it pulled."""
    if read_data_dvc(ws) in (None, before):
        return False
    _pull(Path(ws), remote, endpoint)
    return True


def take_data_version(
    ws: Path, dvc_text: str | None, remote: str | None, endpoint: str | None
) -> bool:
    """Bring the work tree to the newest data version before a merge: its data.dvc from
    the newest event (when there is one) and data/busi pulled to match when that changed it
    or data/busi is absent (a work tree that got only data.dvc). Nothing happens in a work
    tree that records no data version yet. True when it pulled."""
    ws = Path(ws)
    changed = write_data_dvc(ws, dvc_text)
    if not (ws / DVC_FILE).is_file() or not (changed or not (ws / "data" / "busi").is_dir()):
        return False
    _pull(ws, remote, endpoint)
    logger.info("work tree %s pulled the newest data version (%s)", ws, (ws / DVC_FILE).name)
    return True
