"""Config loading and validation, shared by the Snakefile and the CLI.

The JSON schema catches shape errors; `check` catches what a schema cannot: a trait
name with no YAML file, a trait file that does not parse, a base model that is not
defined. Both run before any job starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from traitscope.errors import TraitscopeError
from traitscope.models import ModelSpec
from traitscope.traits import load_trait, trait_path


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error names the file and line."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TraitscopeError(f"{path}: malformed YAML{where}; fix the syntax") from None


def validate_schema(config: dict, schema_path: str | Path, source: str = "config") -> None:
    """Validate against the JSON schema, filling defaults, with the failing key named."""
    import jsonschema

    schema = read_yaml(schema_path)
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise TraitscopeError(f"{source}: invalid value at {key}: {err.message}")


def check(config: dict, traits_dir: str | Path | None = None) -> None:
    """Cross-field checks: every trait exists and parses, models are well formed."""
    traits_dir = Path(traits_dir or config.get("traits_dir", "resources/traits"))
    for name, entry in config["models"].items():
        ModelSpec.from_config(name, entry)
    if config["base_model"] not in config["models"]:
        raise TraitscopeError(
            f"base_model {config['base_model']!r} is not defined under models: "
            f"({', '.join(config['models'])})"
        )
    for name in config["traits"]:
        load_trait(trait_path(traits_dir, name), name)
    sets = config.get("prompt_sets") or {}
    for name, spec in sets.items():
        if spec["dataset"] == "conditions":
            for key in ("harmful", "harmless"):
                if spec.get(key) not in sets:
                    raise TraitscopeError(
                        f"prompt_sets.{name}.{key}: {spec.get(key)!r} is not a defined prompt set"
                    )
    prefill = (config.get("experiments") or {}).get("prefill") or {}
    if prefill.get("enabled"):
        if sets.get(prefill.get("prompt_set"), {}).get("dataset") != "conditions":
            raise TraitscopeError(
                "experiments.prefill.prompt_set must name a prompt set with dataset: conditions"
            )
        if prefill.get("variant") not in config["models"]:
            raise TraitscopeError(
                f"experiments.prefill.variant {prefill.get('variant')!r} is not under models:"
            )
        unknown = [t for t in prefill.get("traits", []) if t not in config["traits"]]
        if unknown:
            raise TraitscopeError(f"experiments.prefill.traits: {', '.join(unknown)} not in traits:")
    external = (config.get("experiments") or {}).get("external") or {}
    if external.get("enabled"):
        where = "experiments.external"
        if external.get("variant") not in config["models"]:
            raise TraitscopeError(f"{where}.variant {external.get('variant')!r} is not under models:")
        hb = external.get("harmbench")
        named = [hb["harmful"], hb["harmless"]] if hb else []
        if external.get("beavertails"):
            bt = external["beavertails"]["prompt_set"]
            if sets.get(bt, {}).get("dataset") != "beavertails":
                raise TraitscopeError(f"{where}.beavertails.prompt_set {bt!r}: needs dataset: beavertails")
        for name in named:
            if name not in sets:
                raise TraitscopeError(f"experiments.external.harmbench: prompt set {name!r} is not defined")
        unknown = [t for t in external.get("traits", []) if t not in config["traits"]]
        if unknown:
            raise TraitscopeError(f"experiments.external.traits: {', '.join(unknown)} not in traits:")
    for i, capture in enumerate(config.get("captures") or []):
        if capture["variant"] not in config["models"]:
            raise TraitscopeError(
                f"captures[{i}]: variant {capture['variant']!r} is not defined under models:"
            )
        if capture["prompt_set"] not in (config.get("prompt_sets") or {}):
            raise TraitscopeError(
                f"captures[{i}]: prompt set {capture['prompt_set']!r} is not defined under prompt_sets:"
            )
    steering = config.get("steering_check") or {}
    if steering.get("enabled", True) and steering.get("trait", "safety/evil") not in config["traits"]:
        raise TraitscopeError(
            f"steering_check.trait {steering.get('trait', 'safety/evil')!r} is not in traits: "
            "add it or set steering_check.enabled: false"
        )


def load_config(path: str | Path, schema_path: str | Path, traits_dir: str | Path | None = None) -> dict:
    """Read, schema-validate and cross-check a config file."""
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise TraitscopeError(f"{path}: expected a YAML mapping of config keys")
    validate_schema(config, schema_path, str(path))
    check(config, traits_dir)
    return config
