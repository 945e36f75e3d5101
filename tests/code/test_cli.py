"""The `busi` command table: every command's help is whole sentences, every option says what
it is, and the paths a DVC stage passes are the defaults of its command (one source)."""

from __future__ import annotations

import argparse
import importlib
import shlex
from pathlib import Path

import pytest
import yaml

from busi import cli
from tests.conftest import REPO_ROOT


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__("parser captured")
        self.parser = parser


def parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser a command builds, caught when it parses (nothing runs)."""

    def capture(self, *args, **kwargs):
        raise _Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    module_name, function = cli.entry_point(command)
    entry = getattr(importlib.import_module(module_name), function)
    with pytest.raises(_Parsed) as caught:
        entry([])
    return caught.value.parser


def is_sentence(text: str | None) -> bool:
    text = (text or "").strip()
    return bool(text) and text[0].isupper() and text.endswith((".", ")"))


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_a_command_describes_itself_in_whole_sentences(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    assert parser.prog == f"busi {command}"
    assert is_sentence(parser.description), f"busi {command}: {parser.description!r}"
    assert parser.description.strip() == cli.describe(command)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_option_has_a_help_line(command, monkeypatch):
    parser = parser_of(command, monkeypatch)
    silent = [
        "/".join(a.option_strings) or a.dest
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert not silent, f"busi {command}: options without help: {silent}"


def test_the_table_lists_each_command_once_with_an_existing_function():
    for command in cli.COMMANDS:
        module_name, function = cli.entry_point(command)
        assert callable(getattr(importlib.import_module(module_name), function)), command


def test_the_usage_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"  {command} " in out


def stage_options(cmd: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(cmd)
    options = {}
    for i, word in enumerate(words):
        if word.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            options[word] = words[i + 1]
    return words[1], options


STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_paths_a_stage_passes_are_its_commands_defaults(stage, monkeypatch):
    command, options = stage_options(STAGES[stage]["cmd"])
    assert command.replace("-", "_") == stage, "a stage runs the command of its own name"
    parser = parser_of(command, monkeypatch)
    by_flag = {flag: action for action in parser._actions for flag in action.option_strings}
    for flag, value in options.items():
        assert flag in by_flag, f"{stage}: busi {command} has no option {flag}"
        default = by_flag[flag].default
        assert default is not None, f"{stage}: {flag} has no default"
        assert Path(default) == Path(value), (
            f"{stage}: {flag} {value} in dvc.yaml, default {default}"
        )
