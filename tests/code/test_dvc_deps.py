"""Every dvc.yaml stage depends on all project code its command runs, so `dvc repro` never
skips a stage whose code changed. The code a stage runs is derived from its command's
module and, transitively, every project module it imports (at the top or inside a
function), read with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from busi.cli import entry_point
from tests.conftest import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
# busi/cli.py only dispatches and builds the parsers (the paths a stage uses are the
# ones dvc.yaml passes, which test_cli checks are the defaults): a new command or help line
# does not make every stage stale.
DISPATCHER = "busi/cli.py"
# The project's code: the steps and their library.
PACKAGES = ("components", "busi")


def module_file(name: str, root: Path = REPO_ROOT) -> Path | None:
    path = root.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def project_imports(path: Path, root: Path = REPO_ROOT) -> set[str]:
    """The project modules ``path`` imports anywhere in its body."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from components import tracking` imports the module busi.tracking
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n.split(".")[0] in PACKAGES and module_file(n, root)}


def code_of(module: str, root: Path = REPO_ROOT) -> set[str]:
    """The files of ``module`` and of every project module it reaches by imports."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = module_file(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(project_imports(path, root))
        # importing components.x runs components/__init__.py first
        todo.extend(
            ".".join(path.relative_to(root).parts[:i]) for i in range(1, len(path.parts) - 1)
        )
    return {p.relative_to(root).as_posix() for p in seen}


def stage_module(cmd: str) -> str:
    words = cmd.split()
    assert words[0] == "busi", f"a stage runs a busi command: {cmd}"
    return entry_point(words[1])[0]


def uncovered(files: set[str], deps: list) -> list[str]:
    names = [d if isinstance(d, str) else next(iter(d)) for d in deps]
    return sorted(
        f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in names)
    )


def test_the_import_walk_finds_function_level_and_package_imports(tmp_path):
    pkg = tmp_path / "components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "step.py").write_text(
        "from components.lib import helper\n\ndef main():\n    from components import late\n"
    )
    (pkg / "lib.py").write_text("import numpy\n")
    (pkg / "late.py").write_text("import components.deep\n")
    (pkg / "deep.py").write_text("")
    (pkg / "unused.py").write_text("")
    found = code_of("components.step", tmp_path)
    assert found == {
        "components/__init__.py",
        "components/step.py",
        "components/lib.py",
        "components/late.py",
        "components/deep.py",
    }
    assert uncovered(found, ["components/step.py", "components/lib.py"]) == [
        "components/__init__.py",
        "components/deep.py",
        "components/late.py",
    ]
    assert uncovered(found, ["components/"]) == []


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_all_the_code_it_runs(stage):
    spec = STAGES[stage]
    files = code_of(stage_module(spec["cmd"])) - {DISPATCHER}
    missing = uncovered(files, spec.get("deps", []))
    assert not missing, f"dvc.yaml stage {stage} runs {missing} but does not depend on them"
