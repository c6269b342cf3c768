"""A model's depth (decoder layers) read from its config.json or its GGUF header, without
loading any weights: so a layer list can be checked before a job pays for the model."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import BinaryIO

from traitscope.errors import TraitscopeError


def expand_layers(layers: str | list[int] | tuple[int, ...] | dict) -> str | tuple[int, ...]:
    """A config layers value as "all" or a tuple: a range {start, stop, step} (stop exclusive)
    is expanded, so every reader sees one form."""
    if isinstance(layers, dict):
        return tuple(range(layers["start"], layers["stop"], layers.get("step", 1)))
    return layers if layers == "all" else tuple(layers)


def _depth_of_config(config: dict) -> int | None:
    """num_hidden_layers of a config.json, or of its text model (multimodal configs nest it)."""
    for node in (config, config.get("text_config") or {}):
        if isinstance(node.get("num_hidden_layers"), int):
            return node["num_hidden_layers"]
    return None


def folder_depth(folder: str | Path) -> int | None:
    """Decoder layers of a model folder, from its config.json alone (no weights); None if unknown."""
    try:
        return _depth_of_config(json.loads((Path(folder) / "config.json").read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def manifest_depth(manifest_path: str | Path) -> int | None:
    """Decoder layers of a prepared model without loading it: from the converted weights' or the
    model folder's config.json, a LoRA variant's from its base; None for a hub id (its config is
    not fetched here) or anything unreadable, where the model's own depth decides after loading."""
    manifest_path = Path(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if "base_manifest" in manifest:
        return manifest_depth(manifest_path.parent / manifest["base_manifest"])
    if manifest.get("source") == "hub":
        return None
    return folder_depth(manifest_path.parent / manifest.get("load_from", ""))


# GGUF metadata value types (the GGUF spec): struct formats of the fixed-size ones
_GGUF_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


_GGUF_MAX_STRING = 1 << 24  # no key or string value comes near it: a longer length is corruption


def _read(f: BinaryIO, fmt: str):
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


def _text(f: BinaryIO) -> str:
    """A length-prefixed string; a length no GGUF writes (a corrupt or big-endian file) is an
    error, not a read of that many bytes."""
    n = _read(f, "<Q")
    if n > _GGUF_MAX_STRING:
        raise ValueError(f"GGUF string of {n} bytes")
    return f.read(n).decode()


def _gguf_value(f: BinaryIO, kind: int):
    """One metadata value; arrays are skipped (None): the depth is a scalar."""
    if kind in _GGUF_SCALARS:
        return _read(f, _GGUF_SCALARS[kind])
    if kind == _GGUF_STRING:
        return _text(f)
    if kind != _GGUF_ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = _read(f, "<I"), _read(f, "<Q")
    if item in _GGUF_SCALARS:
        f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
    else:
        for _ in range(count):
            _gguf_value(f, item)
    return None


def gguf_depth(path: str | Path) -> int | None:
    """`<architecture>.block_count` from a GGUF's header, read key by key until found (SmolLM2's
    13th key, before the tokenizer's arrays) in milliseconds, where `gguf.GGUFReader` maps the
    whole file (2.9 s); None for a file that is not a little-endian GGUF (v2 or later), or is
    cut short or corrupt."""
    counts: dict[str, int] = {}
    architecture = None
    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF" or not 2 <= _read(f, "<I") <= 0xFFFF:  # v1, or big-endian
                return None
            _tensors, n_keys = _read(f, "<Q"), _read(f, "<Q")
            for _ in range(n_keys):
                key = _text(f)
                value = _gguf_value(f, _read(f, "<I"))
                if key == "general.architecture":
                    architecture = value
                elif key.endswith(".block_count") and isinstance(value, int):
                    counts[key] = value
                if architecture is not None and f"{architecture}.block_count" in counts:
                    return counts[f"{architecture}.block_count"]
    except (OSError, OverflowError, struct.error, UnicodeDecodeError, ValueError):
        return None
    return None


def entry_depth(entry: dict) -> int | None:
    """Decoder layers of a config's model entry where a local file tells it: a folder's
    config.json, a `gguf_path`, or the one GGUF an installed `gguf_package` ships (found
    without importing it); None for a hub id, a package that assembles its GGUF from parts
    (only its job builds the file), or anything missing, where the job checks first thing."""
    if entry.get("path"):
        return folder_depth(entry["path"])
    if entry.get("gguf_path"):
        return gguf_depth(entry["gguf_path"])
    if not entry.get("gguf_package"):
        return None
    try:
        found = importlib.util.find_spec(entry["gguf_package"])
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    folder = Path(next(iter(found.submodule_search_locations)))
    candidates = sorted(folder.glob(entry.get("gguf_file") or "*.gguf"))
    return gguf_depth(candidates[0]) if len(candidates) == 1 else None


def _layer_lists(config: dict) -> list[tuple[str, list[int]]]:
    """Every explicit capture layer list of the config, with the key that sets it."""
    found = [("capture.layers", config["capture"]["layers"])]
    found += [
        (f"prompt_sets.{n}.capture.layers", s.get("capture", {}).get("layers"))
        for n, s in config["prompt_sets"].items()
    ]
    found += [
        (f"experiments.{n}.capture.layers", s.get("capture", {}).get("layers"))
        for n, s in config["experiments"].items()
        if s.get("enabled") and isinstance(s.get("capture"), dict)
    ]
    return [(key, list(expand_layers(layers))) for key, layers in found if layers not in (None, "all")]


def check_layers_fit(config: dict) -> None:
    """Capture layers within the base model's depth, where a local folder's config.json or a
    GGUF's header tells it without loading anything (hub models: the capture job checks first
    thing)."""
    for key, layers in _layer_lists(config):
        require_layers_fit(key, layers, config)


def require_layers_fit(key: str, layers: list[int], config: dict, variant: str | None = None) -> None:
    """`layers` (set by `key`) within the depth of `variant`'s base model (default: the config's
    base model), where a local file tells it (`entry_depth`)."""
    name = variant or config["base_model"]
    entry = config["models"][name]
    while entry.get("lora") or entry.get("finetune"):
        name = (entry.get("lora") or entry.get("finetune"))["base"]
        entry = config["models"][name]
    depth = entry_depth(entry)
    beyond = [layer for layer in layers if depth is not None and layer >= depth]
    if beyond:
        raise TraitscopeError(
            f"{key}: layer(s) {beyond} beyond {name}'s {depth} layers (0..{depth - 1}); fix {key}"
        )
