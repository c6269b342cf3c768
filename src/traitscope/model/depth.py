"""A model's depth (decoder layers) read from its config.json, without loading any weights:
so a layer list can be checked before a job pays for the model."""

from __future__ import annotations

import json
from pathlib import Path


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
