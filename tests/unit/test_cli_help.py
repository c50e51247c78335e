"""Every ``greenchannel`` subcommand, found by walking the real parser (not a list kept by hand):
its ``--help`` exits 0, opens with a description, and a command that does something offers
``--json``."""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator

import pytest

from broker.cli._main import COMMANDS, main, parser_for


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help or "" for choice in action._choices_actions}
            yield from ((name, sub, lines.get(name, "")) for name, sub in action.choices.items())


def _walk(
    path: tuple[str, ...], parser: argparse.ArgumentParser, line: str
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    yield path, parser, line
    for name, sub, sub_line in _subcommands(parser):
        yield from _walk((*path, name), sub, sub_line)


def every_command() -> list[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """(argv path, parser, the line its parent's --help lists) of every command and subcommand;
    each top-level command as ``parser_for`` builds it when that command runs."""
    found: list[tuple[tuple[str, ...], argparse.ArgumentParser, str]] = []
    for name in COMMANDS:
        [(_, real, line)] = [c for c in _subcommands(parser_for([name])) if c[0] == name]
        found += _walk((name,), real, line)
    return found


FOUND = {path: (parser, line) for path, parser, line in every_command()}
COMMAND_PATHS = list(FOUND)


def _is_leaf(parser: argparse.ArgumentParser) -> bool:
    return not any(isinstance(action, argparse._SubParsersAction) for action in parser._actions)


def test_the_walk_finds_every_command_and_the_nested_ones() -> None:
    assert {path[0] for path in COMMAND_PATHS} == set(COMMANDS)
    # Nested levels are found by walking, e.g. submit's types and keys' actions.
    assert ("submit", "stop-payment") in COMMAND_PATHS
    assert ("keys", "rotate") in COMMAND_PATHS
    assert ("ledger", "export") in COMMAND_PATHS
    assert {("list",), ("cancel",)} <= set(COMMAND_PATHS)
    assert len(COMMAND_PATHS) > len(COMMANDS) + 10


def test_greenchannel_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listed = " ".join(capsys.readouterr().out.split())
    for name, command in COMMANDS.items():
        assert f"{name} {' '.join(command.help.split())}" in listed


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[" ".join(p) for p in COMMAND_PATHS])
def test_help_exits_0_with_a_description_and_json(path: tuple[str, ...]) -> None:
    parser, line = FOUND[path]
    assert line.strip(), f"`greenchannel --help` lists {' '.join(path)} without a help line"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*path, "--help"])
    assert done.value.code == 0
    text = out.getvalue()
    assert text.startswith(f"usage: greenchannel {' '.join(path)}")
    # The description is the line the parent lists, shown under the usage.
    assert parser.description, path
    description = " ".join(text.split("\n\n")[1].split())
    assert description == " ".join(parser.description.split())
    if _is_leaf(parser):
        assert "--json" in parser._option_string_actions, f"{' '.join(path)} has no --json"
        assert "--json" in text
