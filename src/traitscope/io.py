"""Atomic file writes: a killed job must never leave a file that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from traitscope.errors import TraitscopeError, require_trait


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_dir(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> None:
    """Fill a temporary sibling folder with `write`, then rename it onto `path` (replacing it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, with NaN rejected so downstream parsers never choke."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False) + "\n")


def write_parquet(path: str | os.PathLike[str], df: Any) -> None:
    """Write a DataFrame to Parquet atomically."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def save_safetensors(path: str | os.PathLike[str], tensors: dict, metadata: dict | None = None) -> None:
    """Save tensors atomically (contiguous copies, as safetensors requires), metadata in key order."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        if metadata:
            _sort_header_metadata(tmp)


def _sort_header_metadata(path: Path) -> None:
    """Rewrite a safetensors header's metadata in key order, in place.

    safetensors writes the metadata in hash-map order, which changes from run to run, so two runs
    that compute equal tensors would otherwise write files with different bytes (and checksums).
    Reordering keys keeps the header's length, so no tensor byte moves.
    """
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        header = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # never seen: serde_json and json escape strings alike
            raise TraitscopeError(f"{path}: a sorted safetensors header would not fit; report this")
        f.seek(8)
        f.write(text.ljust(size))


def save_figure(path: str | os.PathLike[str], fig: Any) -> None:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def parse_yaml(text: str | bytes, where: str | os.PathLike[str]) -> Any:
    """Parse YAML text; a syntax error is one line naming the file and the line to fix."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        raise TraitscopeError(f"{where}: malformed YAML{at}; fix the syntax") from None


def read_yaml_items(path: Path, trait: str) -> list:
    """The `items:` list of a trait's YAML file written as `{trait: ..., items: [...]}`;
    malformed YAML, another top level, an `items` that is not a list, or another trait's
    `trait:` is one line naming the file."""
    data = parse_yaml(path.read_text(), path) or {}
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TraitscopeError(f"{path}: expected a mapping with an items: list; fix the file")
    require_trait(path, data.get("trait"), trait, f"pass {trait}'s file")
    return items


def read_json(path: str | os.PathLike[str], stage: str, needs: tuple[str, ...] = ()) -> dict:
    """A stage's JSON result, one line naming the file and the stage to rerun when it is
    missing, truncated or another stage's (without the keys in `needs`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:  # ValueError: malformed JSON, or a binary file
        if isinstance(exc, json.JSONDecodeError):
            reason = f"{exc.msg} at line {exc.lineno}"
        else:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise TraitscopeError(f"{path}: cannot read JSON ({reason}); rerun {stage}") from None
    missing = [k for k in needs if not isinstance(data, dict) or k not in data]
    if missing:
        raise TraitscopeError(f"{path}: no {missing[0]!r}, not {stage}'s result; pass {stage}'s JSON")
    return data


def read_table(path: str | os.PathLike[str], stage: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A stage's Parquet, one line naming the file when it is missing, truncated or lacks a
    column in `columns` (another stage's table), instead of a reader's traceback."""
    try:
        table = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise TraitscopeError(f"{path}: cannot read Parquet ({type(exc).__name__}); rerun {stage}") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise TraitscopeError(f"{path}: missing column(s) {', '.join(missing)}; pass {stage}'s output")
    return table
