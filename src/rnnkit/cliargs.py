"""Command-line flags from a task's config dataclasses, and TOML config files.

Each field of the task's sections (``model``, ``data``, ``train``) becomes a kebab-case flag (``hidden_size`` ->
``--hidden-size``) whose help is the field's help plus its default; a ``tuple[str, ...]`` field takes one or more
values (``--data a.mid b.mid``). Flags default to ``argparse.SUPPRESS`` so the
namespace holds only the flags actually given: the precedence is defaults < TOML file < explicit flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import types
import typing
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10: the tomli backport, if installed
    tomllib = None

from rnnkit.config import RunConfig
from rnnkit.errors import ConfigError
from rnnkit.flags import float_flag, int_flag, parse_bool
from rnnkit.io import read_input

__all__ = [
    "add_config_flags",
    "build_config",
    "config_overrides",
    "float_flag",
    "int_flag",
    "load_toml",
    "parse_bool",
    "to_toml",
]


def _is_list(hint: Any) -> bool:
    """A field of several values (``tuple[str, ...]``, or that or None): its flag takes one or more."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return any(typing.get_origin(h) is tuple for h in options)


def _flag_type(hint: Any):
    if hint is bool:
        return parse_bool
    if hint is int:
        return int
    if hint is float:
        return float
    return str


def add_config_flags(
    parser: argparse.ArgumentParser, config_cls: type[RunConfig], exclude: tuple[str, ...] = ()
) -> None:
    """One flag per config field, grouped by section, default SUPPRESS (absent unless given); no flag for the fields
    named in ``exclude`` (a command whose own flag of that name means something else)."""
    for name, cls in config_cls.sections().items():
        group = parser.add_argument_group(f"[{name}] options (also settable in the TOML file)")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in exclude:
                continue
            flag = "--" + f.name.replace("_", "-")
            kind = _flag_type(hints[f.name])
            metavar = {parse_bool: "BOOL", int: "N", float: "X"}.get(kind, "VALUE")
            if f.name in ("data", "val"):
                metavar = "FILE"
            help_text = f"{f.metadata.get('help', '')} (default: {f.default})"
            several = {"nargs": "+"} if _is_list(hints[f.name]) else {}
            group.add_argument(flag, dest=f.name, type=kind, default=argparse.SUPPRESS, metavar=metavar, help=help_text,
                               **several)  # fmt: skip


def config_overrides(args: argparse.Namespace, config_cls: type[RunConfig]) -> dict[str, dict[str, Any]]:
    """The config fields given on the command line, as a nested {section: {field: value}} dict."""
    given = vars(args)
    out: dict[str, dict[str, Any]] = {}
    for name, cls in config_cls.sections().items():
        for f in dataclasses.fields(cls):
            if f.name in given:
                out.setdefault(name, {})[f.name] = given[f.name]
    return out


def load_toml(path: str | os.PathLike, config_cls: type[RunConfig]) -> dict[str, dict[str, Any]]:
    """Read a TOML config with the task's tables; an unknown table or key is a ConfigError naming it and the file."""
    if tomllib is None:  # pragma: no cover
        raise ConfigError("reading a TOML config needs Python >= 3.11 (tomllib)")
    raw = read_input(path, expected="a TOML config file", error=ConfigError)
    try:
        d = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {e.start})") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from e
    config_cls.check_keys(d, where=str(path))
    return d


def build_config(
    toml_path: str | os.PathLike | None,
    overrides: dict[str, dict[str, Any]],
    config_cls: type[RunConfig],
    base: dict[str, dict[str, Any]] | None = None,
) -> RunConfig:
    """Defaults < ``base`` (a resumed run's saved config) < TOML file < ``overrides`` (the explicit flags),
    validated by the config classes."""
    base = config_cls.with_saved_defaults(base or {})
    merged: dict[str, dict[str, Any]] = {name: dict(base.get(name, {})) for name in config_cls.sections()}
    if toml_path is not None:
        for section, values in load_toml(toml_path, config_cls).items():
            merged[section].update(values)
    for section, values in overrides.items():
        merged[section].update(values)
    return config_cls.from_dict(merged)


def to_toml(config: RunConfig) -> str:
    """The config as TOML text (None fields are left out: TOML has no null)."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, list | tuple):  # of strings: a JSON array of strings is a TOML array
                text = json.dumps(list(value))
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)
