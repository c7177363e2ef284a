"""The task contract: every task declares its inference commands, and the CLI is generic over them.

A new task is its module, its data module and one line in ``rnnkit.tasks.TASKS``: these tests hold every task to
the declarations the CLI builds its parsers from, and hold ``cli.py`` to naming no task.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import rnnkit.cli
from rnnkit.cli import build_parser
from rnnkit.tasks import TASKS
from rnnkit.tasks.base import Command, Task

KINDS = {"scores", "table", "text", "files"}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_command_names_a_method_whose_keywords_are_its_flags(name):
    task_cls = TASKS[name]
    assert task_cls.name == name and task_cls.help and task_cls.title
    assert len({c.name for c in task_cls.commands}) == len(task_cls.commands)
    for command in task_cls.commands:
        assert isinstance(command, Command) and command.kind in KINDS
        method = getattr(task_cls, command.method, None)
        assert callable(method), f"{name}: {command.name} calls {command.method}, which {task_cls.__name__} lacks"
        params = inspect.signature(method).parameters
        keywords = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY}
        assert keywords == {f.dest for f in command.flags}, (name, command.name)
        for flag in command.flags:  # a flag's default is the method's default, so Python and the CLI agree
            if not flag.required:
                assert params[flag.dest].default == flag.default, (name, command.name, flag.name)


def test_a_flag_shared_by_tasks_parses_alike():
    """The CLI parses a command's flags before it knows the run's task: tasks must agree on each flag's type."""
    seen: dict[tuple[str, str], object] = {}
    for task_cls in TASKS.values():
        for command in task_cls.commands:
            for flag in command.flags:
                kind = (flag.action, flag.type.__qualname__ if flag.type else None)
                assert seen.setdefault((command.name, flag.dest), kind) == kind, (task_cls.name, flag.name)


def test_the_parser_offers_every_declared_command_and_flag():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for task_cls in TASKS.values():
        assert task_cls.name in next(a for a in sub.choices["train"]._actions if a.dest == "task").choices
        for command in task_cls.commands:
            options = {o for a in sub.choices[command.name]._actions for o in a.option_strings}
            assert {f.name for f in command.flags} <= options, (task_cls.name, command.name)


def test_the_cli_names_no_task():
    """No task name as a string literal, no import of a task module: the CLI knows tasks through TASKS only."""
    tree = ast.parse(Path(rnnkit.cli.__file__).read_text())
    names = set(TASKS)
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names]
    imports = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
               and n.module.startswith("rnnkit.tasks.")]  # fmt: skip
    assert literals == [] and imports == []


def test_a_task_without_a_command_is_refused_by_name(tmp_path):
    assert Task.command.__func__(TASKS["lm"], "predict") is None
    assert TASKS["lm"].command("sample").method == "sample"
