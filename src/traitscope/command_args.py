"""Argument types the subcommands share: a rule writes the config's null as the word `none`.

The core subcommands (`traitscope.cli`) and the experiments' own (`add_commands` in each
experiment module) parse their arguments with these, so no experiment imports the CLI.
"""

from __future__ import annotations


def int_or_none(value: str) -> int | None:
    """A nullable count: `none` (the config's null) or an integer."""
    return None if value.lower() in ("none", "null") else int(value)


def path_or_none(value: str) -> str | None:
    """A path the rule may leave unset: the word `none`."""
    return None if value == "none" else value


def words_or_none(values: list[str]) -> list[str]:
    return [] if values == ["none"] else values
