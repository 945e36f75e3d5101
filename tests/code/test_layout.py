"""The layout: components/ holds the pipeline steps only (one module = one `busi` verb = one
DVC stage or Airflow task id), no step imports another, and the library busi/ holds the
rest without shadowing the standard library. Read with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

from busi.cli import TABLE
from busi.orchestration.dag_settings import TRAINING_STEPS
from tests.code.test_dvc_deps import project_imports
from tests.conftest import REPO_ROOT

# Modules of components/ that are not steps, and why.
NOT_STEPS = {
    "__init__": "the package",
    "__main__": "`python -m components` is the `busi` command",
    "pipeline_model": "versions logged before busi/ existed pickled this name",
}


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package``."""
    root = package.parent
    return {
        ".".join(p.relative_to(root).with_suffix("").parts): p
        for p in sorted(package.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def step_imports(components: Path) -> dict[str, list[str]]:
    """Step module -> the other step modules it imports."""
    steps = {f"components.{p.stem}" for p in components.glob("*.py") if p.stem not in NOT_STEPS}
    found = {}
    for step in sorted(steps):
        imports = project_imports(components / f"{step.split('.')[1]}.py", components.parent)
        others = sorted((imports & steps) - {step})
        if others:
            found[step] = others
    return found


def step_commands() -> dict[str, str]:
    """Step name -> its `busi` command, from the command table."""
    out = {}
    for command, (entry, _text) in TABLE.items():
        module, function = entry.split(":")
        if module.startswith("components."):
            assert function == "main", f"busi {command}: a step's entry point is main ({entry})"
            out[module.split(".", 1)[1]] = command
    return out


def dag_task_ids() -> set[str]:
    """The task ids of the DAGs: literal ``task_id=`` and busi_training's one task a step."""
    ids = set(TRAINING_STEPS)
    for path in (REPO_ROOT / "dags").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "task_id"
                and isinstance(node.value, ast.Constant)
            ):
                ids.add(node.value.value)
    return ids


def test_every_module_in_components_is_a_step_with_its_command():
    commands = step_commands()
    modules = {p.stem for p in (REPO_ROOT / "components").glob("*.py")} - set(NOT_STEPS)
    assert modules == set(commands), "components/ holds the steps of busi/cli.py's table, only"
    for step, command in commands.items():
        assert command == step.replace("_", "-")


def test_every_stage_and_task_is_a_step_module():
    stages = set(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])
    for name in sorted(stages | dag_task_ids()):
        assert (REPO_ROOT / "components" / f"{name}.py").is_file(), f"{name} has no module"


def test_no_step_imports_another_step():
    assert step_imports(REPO_ROOT / "components") == {}


def test_the_compatibility_module_imports_no_step():
    imports = project_imports(REPO_ROOT / "components" / "pipeline_model.py")
    assert {m for m in imports if m.startswith("components")} == set()


def test_the_import_check_finds_a_step_importing_a_step(tmp_path):
    pkg = tmp_path / "components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train_a.py").write_text("def main():\n    from components import train_b\n")
    (pkg / "train_b.py").write_text("from components.train_c import x\n")
    (pkg / "train_c.py").write_text("from busi.model import chain\nx = 1\n")
    assert step_imports(pkg) == {
        "components.train_a": ["components.train_b"],
        "components.train_b": ["components.train_c"],
    }


def test_no_module_shadows_the_standard_library():
    for package in ("components", "busi"):
        for name in module_names(REPO_ROOT / package):
            leaf = name.split(".")[-1]
            assert leaf not in sys.stdlib_module_names, f"{name} shadows the stdlib's {leaf}"


def test_the_code_logged_with_the_pipeline_model_is_all_it_imports():
    # log_pipeline_model logs busi/ as the model's code: a fresh process that loads a
    # version runs that copy, so it must not reach into components/.
    library = module_names(REPO_ROOT / "busi")
    seen, todo = set(), ["busi.model.pipeline_model"]
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        imports = project_imports(library[name])
        assert not {m for m in imports if m.split(".")[0] == "components"}, name
        todo.extend(imports)
    assert "busi.model.chain" in seen


# Where the library reaches into components/, and why; nothing else may.
LIBRARY_USES_OF_STEPS = {
    "busi.orchestration.tasks": {"components.ingest_batch"},  # the busi_new_data task
    "busi.serving.server": {"components.pipeline_model"},  # versions pickled before busi/
}


def test_the_library_uses_the_steps_only_where_listed():
    uses = {}
    for name, path in module_names(REPO_ROOT / "busi").items():
        steps = {m for m in project_imports(path) if m.startswith("components.")}
        if steps:
            uses[name] = steps
    assert uses == LIBRARY_USES_OF_STEPS


PROJECT_PACKAGES = ("busi", "components", "bench")


def private_imports(roots: list[Path]) -> list[str]:
    """``file:line module._name`` for every import of another module's private name (one
    underscore) from the project's packages: what a module shares should be public."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ImportFrom) or not node.module:
                    continue
                if node.module.split(".")[0] not in PROJECT_PACKAGES:
                    continue
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path}:{node.lineno} {node.module}.{alias.name}")
    return found


def test_no_module_imports_another_module_s_private_names():
    roots = [REPO_ROOT / name for name in (*PROJECT_PACKAGES, "dags")]
    assert private_imports(roots) == []


def test_the_private_import_check_finds_one(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("from busi.local.up import _helper, shown\n")
    (tmp_path / "pkg" / "b.py").write_text("from os.path import _get_sep\nfrom busi import x\n")
    assert private_imports([tmp_path / "pkg"]) == [
        f"{tmp_path / 'pkg' / 'a.py'}:1 busi.local.up._helper"
    ]
