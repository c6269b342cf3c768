"""Argument types the subcommands share: a rule writes the config's null as the word `none`.

The core subcommands (`traitscope.cli`) and the experiments' own (`add_commands` in each
experiment module) parse their arguments with these, so no experiment imports the CLI.
"""

from __future__ import annotations

import argparse
import json


def path_or_none(value: str) -> str | None:
    """A path the rule may leave unset: the word `none`."""
    return None if value == "none" else value


def json_object(value: str) -> dict:
    """A config entry the rule passes as JSON (`--spec`): anything else is argparse's one-line error."""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {value[:80]!r}") from None
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {value[:80]!r}")
    return data


def add_own_bow_argument(parser: argparse.ArgumentParser) -> None:
    """`--own-bag-of-words TRAIT TRAIT_PROMPTS` (repeatable): each prompt-contrast trait stands
    beside a bag of words fitted on its own extraction rows, the rows its vector saw."""
    parser.add_argument(
        "--own-bag-of-words",
        nargs=2,
        action="append",
        default=[],
        metavar=("TRAIT", "TRAIT_PROMPTS"),
        dest="own_bow",
        help="a prompt-contrast trait's prompt set, whose extraction rows fit its own bag of words",
    )
