"""Reading a dry run's shell commands: the `--settings` JSON a rule passed its subcommand."""

from __future__ import annotations

import json
import shlex


def settings_in(command: str) -> dict:
    """The `--settings` object of one printed `traitscope <stage> ...` command line."""
    words = shlex.split(command.split(" 2> ")[0])
    return json.loads(words[words.index("--settings") + 1])
