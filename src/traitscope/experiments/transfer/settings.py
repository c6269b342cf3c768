"""The transfer table's settings (experiments.transfer), light to import: the CLI parses them
from one `--settings` argument and tests build them from the schema's defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class TransferSettings:
    """The pools every trait is scored at, and the bootstrap."""

    SECTION: ClassVar[str] = "#/properties/experiments/properties/transfer"

    pools: tuple[str, ...]
    n_boot: int
    seed: int
