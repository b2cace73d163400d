"""Command-line flags that fill the fields of a config dataclass, declared once in a table of Flags.

A command lists its flags, in the order `--help` shows them, as a tuple of `Flag`s; `add_flags`
adds them to its parser, and `build(SomeConfig, args, FLAGS, **rest)` makes the dataclass back
from the parsed args: every flag whose `field` is one of SomeConfig's fields sets it, the others
are ignored (they fill another dataclass of the command, or the command reads them itself). A
flag whose value is None (not given, default None) leaves the dataclass's own default, so a table
may leave a default to its dataclass (ENGINE_FLAGS) rather than write it again.

The config modules are not imported here: `epochctl --help` stays light (no torch, no store).
tests/unit/controlplane/test_cli_contract.py checks that the defaults a table does write agree
with its dataclass's.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Flag:
    """`--name`, which sets the config field `field` (default: its dest, the name in snake case)."""

    name: str  # without the leading --
    help: str
    type: Callable[[str], Any] | None = None  # None: the string as given
    default: Any = None
    metavar: str | None = None
    choices: Sequence[str] | None = None
    required: bool = False  # with `env`: only where that variable is unset
    env: str | None = None  # the default is this environment variable's value, read by add_flags
    dest: str = ""  # default: name in snake case
    field: str = ""  # default: dest
    group: str | None = None  # title of the --help section; None: the parser's own options
    negate: bool = False  # --no-X: a switch (store_true) whose field is True unless given
    switch: bool = False  # a switch (store_true) whose field is whether it was given
    blank_is_unset: bool = False  # "" leaves the dataclass default too (as None does)

    @property
    def key(self) -> str:
        """Where argparse puts the value: args.<key>."""
        return self.dest or self.name.replace("-", "_")

    @property
    def target(self) -> str:
        """The dataclass field the flag sets."""
        return self.field or self.key

    def value(self, args: argparse.Namespace) -> Any:
        """The field's value from the parsed args (None: leave the dataclass default)."""
        given = getattr(args, self.key)
        if self.blank_is_unset and given == "":
            return None
        return not given if self.negate else given


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> None:
    """Add each flag in turn (argument groups by title, made on first use)."""
    for flag in flags:
        into: Any = parser if flag.group is None else _group(parser, flag.group)
        options: dict[str, Any] = {"help": flag.help}
        if flag.dest:
            options["dest"] = flag.dest
        if flag.switch or flag.negate:
            options["action"] = "store_true"
        else:
            default, required = flag.default, flag.required
            if flag.env is not None:
                default, required = os.environ.get(flag.env), required and flag.env not in os.environ
            options.update(default=default, required=required)
            for name in ("type", "metavar", "choices"):
                if getattr(flag, name) is not None:
                    options[name] = getattr(flag, name)
        into.add_argument(f"--{flag.name}", **options)


def add_command(
    subparsers: Any, name: str, help: str, flags: Iterable[Flag], run: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    """`epochctl NAME`, with `flags`, running `run(args)`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, help=help)
    add_flags(parser, flags)
    parser.set_defaults(func=run)
    return parser


def _group(parser: argparse.ArgumentParser, title: str) -> Any:
    for group in parser._action_groups:
        if group.title == title:
            return group
    return parser.add_argument_group(title)


def values(cls: type, args: argparse.Namespace, flags: Iterable[Flag]) -> dict[str, Any]:
    """{field: value} for each of the flags that sets a field of the dataclass `cls` and is not None."""
    names = {f.name for f in dataclasses.fields(cls)}
    found = {flag.target: flag.value(args) for flag in flags if flag.target in names}
    return {name: value for name, value in found.items() if value is not None}


def build(cls: type[T], args: argparse.Namespace, flags: Iterable[Flag], **fields: Any) -> T:
    """`cls` from the flags that set its fields, plus `fields` (what no flag gives as is)."""
    return cls(**{**values(cls, args, flags), **fields})
