"""Config loading and validation, shared by the Snakefile and the CLI.

The JSON schema (with one fragment per experiment) catches shape errors and is the one
place every default lives: validation fills them in, so rules pass every value
explicitly. `check` catches what a schema cannot: a trait with no YAML file, a name that
points nowhere. Experiments check their own sections (`check_config` in their module),
so this module names none of them. Everything runs before any job starts.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from traitscope.data.registry import TAKES_LABEL, missing_source
from traitscope.data.traits import contrast_pool, read_trait, trait_path
from traitscope.errors import TraitscopeError
from traitscope.io import parse_yaml
from traitscope.model.depth import check_layers_fit
from traitscope.model.loading import ModelSpec, template_file, template_text

SCHEMA_NAME = "config.schema.yaml"


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error names the file and line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise TraitscopeError(f"{path}: file not found") from None
    return parse_yaml(text, path)


def find_schema(start: str | Path | None = None) -> Path:
    """workflow/schemas/config.schema.yaml of the checkout holding `start` (or this package)."""
    here = Path(__file__).resolve()
    for base in [Path(start).resolve()] if start else []:
        for folder in [base, *base.parents]:
            candidate = folder / "workflow" / "schemas" / SCHEMA_NAME
            if candidate.is_file():
                return candidate
    candidate = here.parents[2] / "workflow" / "schemas" / SCHEMA_NAME  # src layout checkout
    if candidate.is_file():
        return candidate
    raise TraitscopeError(f"cannot find workflow/schemas/{SCHEMA_NAME}; pass --schema")


def load_schema(schema_path: str | Path) -> dict:
    """The schema with every file `$ref` inlined, and every registered experiment's fragment
    as its `experiments.<name>` section.

    Inlining keeps default-filling working inside fragments, which Snakemake's own
    `validate` does not do across file references.
    """
    schema_path = Path(schema_path).resolve()  # fragments are found beside it, from any cwd
    schema = load_core_schema(schema_path)
    # each registered experiment brings its own section's fragment
    from traitscope.experiments.contract import registered, schema_file

    sections = schema["properties"]["experiments"].setdefault("properties", {})
    for name, module in registered().items():
        fragment = schema_file(module, schema_path.parent)
        sections[name] = _inline({"$ref": str(fragment)}, schema_path.parent)
    return schema


def load_core_schema(schema_path: str | Path) -> dict:
    """The schema's own file with its file `$ref`s inlined, without the experiments' fragments,
    whose registration imports every experiment (seconds, for a job that reads one section)."""
    schema_path = Path(schema_path)
    return _inline(read_yaml(schema_path), schema_path.parent)


def _inline(node: Any, base: Path) -> Any:
    """`node` with every file `$ref` (relative to `base`) replaced by the file's content."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith("#"):
            target = base / ref
            fragment = read_yaml(target)
            fragment.pop("$schema", None)
            return _inline(fragment, target.parent)
        return {k: _inline(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, base) for v in node]
    return node


def _default_filling(validator_cls: Any) -> Any:
    """A validator class that fills each property's schema default before validating it."""
    import jsonschema

    properties = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator: Any, props: dict, instance: Any, schema: dict):
        if isinstance(instance, dict):
            for name, sub in props.items():
                if isinstance(sub, dict) and "default" in sub:
                    instance.setdefault(name, copy.deepcopy(sub["default"]))
        yield from properties(validator, props, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def validate_config(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Validate in place against the schema, filling defaults; the failing key is named."""
    import jsonschema

    schema = load_schema(schema_path)
    validator = _default_filling(jsonschema.validators.validator_for(schema))(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        # anyOf/oneOf: the deepest error of an alternative names the key, unless the schema
        # says what the alternatives are for (`x-error`)
        while err.context and not _message_of(err):
            err = max(err.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
        raise invalid_value(source, [], err)
    check_capture_overrides(config, schema, source)
    return config


# YAML 1.1 reads an exponent without a dot or a sign (2e-4, 2.0e4) as text
NUMBER_AS_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _message_of(err: Any) -> str | None:
    """The schema's own message for this error (`x-error`: one, or one per keyword), if any."""
    reason = err.schema.get("x-error") if isinstance(err.schema, dict) else None
    return reason.get(err.validator) if isinstance(reason, dict) else reason


def invalid_value(source: str, prefix: list[str], err: Any) -> TraitscopeError:
    """One line for a schema error: where it came from, the key (under `prefix`), the reason,
    said in the config's words where jsonschema's are not (an unknown key, a number YAML read
    as text, a schema's own `x-error`: a message, or one per failing keyword)."""
    path = [*prefix, *(str(p) for p in err.absolute_path)]
    key = ".".join(path) or "(top level)"
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in known]
        if unknown:
            near = difflib.get_close_matches(str(unknown[0]), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(known)}"
            where = f" under {key}" if path else ""
            return TraitscopeError(f"{source}: unknown key {unknown[0]!r}{where}{hint}")
    reason = _message_of(err)
    if reason is None and err.validator == "type" and isinstance(err.instance, str):
        if NUMBER_AS_TEXT.match(err.instance):
            reason = (
                f"{err.message}: YAML reads {err.instance} as text; write a dot and a signed "
                "exponent, e.g. 2.0e-4 or 1.0e+5"
            )
    return TraitscopeError(f"{source}: invalid value at {key}: {reason or err.message}")


def _without_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    return [_without_defaults(v) for v in node] if isinstance(node, list) else node


def check_capture_overrides(config: dict, schema: dict, source: str) -> None:
    """A prompt set's or experiment's capture overrides hold the capture section's own values.
    The schema names only their keys there (its defaults would fill every key and override the
    global section), so their values are checked against the section without its defaults."""
    import jsonschema

    section = {**_without_defaults(schema["definitions"]["capture"]), "definitions": schema["definitions"]}
    validator = jsonschema.validators.validator_for(schema)(section)
    found = [(f"prompt_sets.{n}.capture", s.get("capture")) for n, s in config["prompt_sets"].items()]
    found += [(f"experiments.{n}.capture", s.get("capture")) for n, s in config["experiments"].items()]
    for where, overrides in found:
        errors = list(validator.iter_errors(overrides)) if isinstance(overrides, dict) else []
        if errors:
            raise invalid_value(source, [where], min(errors, key=lambda e: list(e.absolute_path)))


def require_variant(where: str, name: Any, config: dict) -> None:
    if name not in config["models"]:
        raise TraitscopeError(
            f"{where}: variant {name!r} is not defined under models: ({', '.join(config['models'])})"
        )


def require_judge_models(where: str, judge: dict, config: dict) -> None:
    """A judge: section's models (the local LLM judge, the classifier's reader) are variants."""
    for key, name in (
        ("local.variant", judge.get("local", {}).get("variant")),
        ("classifier.reader", judge.get("classifier", {}).get("reader")),
    ):
        if name is not None:
            require_variant(f"{where}.{key}", name, config)


def require_prompt_set(where: str, name: Any, config: dict, dataset: str | None = None) -> None:
    spec = config["prompt_sets"].get(name)
    if spec is None:
        raise TraitscopeError(f"{where}: prompt set {name!r} is not defined under prompt_sets:")
    if dataset is not None and spec["dataset"] != dataset:
        raise TraitscopeError(f"{where}: prompt set {name!r} needs dataset: {dataset}")


def require_distinct_sets(where: str, harmful: str, harmless: str) -> None:
    """A harmful-vs-harmless comparison of one set with itself would report chance as a result."""
    if harmful == harmless:
        raise TraitscopeError(
            f"{where}: harmful and harmless name the same prompt set ({harmful!r}); "
            "the comparison needs a benign set as harmless"
        )


def require_captured(where: str, pools: list[str], prompt_set: str, config: dict) -> None:
    """`pools` are among those captured for `prompt_set`: its own capture.pools, else the global
    ones (an analysis reading another pool would fail only after every capture)."""
    spec = config["prompt_sets"].get(prompt_set, {})
    captured = spec.get("capture", {}).get("pools", config["capture"]["pools"])
    missing = [p for p in pools if p not in captured]
    if missing:
        own = f" (or prompt_sets.{prompt_set}.capture.pools)" if prompt_set in config["prompt_sets"] else ""
        raise TraitscopeError(
            f"{where}: {', '.join(missing)} not captured for prompt set {prompt_set}; "
            f"add it to capture.pools{own}"
        )


def require_traits(where: str, names: list[str], config: dict) -> None:
    unknown = [t for t in names if t not in config["traits"]]
    if unknown:
        raise TraitscopeError(
            f"{where}: {', '.join(unknown)} not in traits: add them there or remove them here"
        )


def require_contrast_trait(where: str, name: Any, config: dict) -> None:
    """A configured prompt-contrast trait: its extraction rows are labelled prompts, what a
    bag-of-words baseline is fitted on (a persona trait's prompts differ only in system prompt)."""
    require_traits(where, [name], config)
    if contrast_pool(trait_path(config["traits_dir"], name)) is None:
        raise TraitscopeError(f"{where}: {name} is a persona trait; name a prompt-contrast trait")


def finetune_settings(config: dict, variant: str) -> dict:
    """Every finetune setting of a finetuned variant: the `finetune:` section, then its overrides."""
    entry = config["models"][variant]["finetune"]
    return {**config["finetune"], **{k: v for k, v in entry.items() if k not in ("base", "data")}}


def check_variant_bases(config: dict) -> None:
    """A LoRA or finetuned variant's base must be another configured variant, with no cycle."""
    models = config["models"]

    def base_of(name: str) -> str | None:
        source = models[name].get("lora") or models[name].get("finetune")
        return source["base"] if source else None

    for name in models:
        chain = [name]
        while (base := base_of(chain[-1])) is not None:
            key = "lora" if "lora" in models[chain[-1]] else "finetune"
            require_variant(f"models.{chain[-1]}.{key}.base", base, config)
            if base in chain:
                raise TraitscopeError(
                    f"models.{name}: variants are based on each other in a cycle "
                    f"({' -> '.join([*chain, base])}); fix their base"
                )
            chain.append(base)


def check(config: dict, traits_dir: str | Path | None = None, root: str | Path = ".") -> None:
    """Cross-field checks of a validated config (defaults filled). Relative file paths are read
    from `root`: the working folder, where the jobs read them (`load_config`: the checkout)."""
    from traitscope.experiments.contract import capture_requests, derived_capture, registered

    traits_dir = Path(traits_dir or config["traits_dir"])
    for name, entry in config["models"].items():
        spec = ModelSpec.from_config(name, entry)
        template = template_file(spec.chat_template)
        if template:  # named here, not as Snakemake's missing input
            template_text(replace(spec, chat_template=str(Path(root) / template)))
    mirror = config.get("data_mirror")
    if mirror and not (Path(root) / mirror).is_dir():
        raise TraitscopeError(
            f"data_mirror: folder {mirror} not found (from {Path(root).resolve()}); fix the path, or "
            "unset data_mirror to fetch every dataset from its origin"
        )
    check_variant_bases(config)
    require_variant("base_model", config["base_model"], config)
    check_layers_fit(config)
    for name in config["traits"]:
        read_trait(trait_path(traits_dir, name), name)
    for name, spec in config["prompt_sets"].items():
        missing = missing_source(spec)
        if missing:
            raise TraitscopeError(f"prompt_sets.{name}: {missing}")
        for i, excluded in enumerate(spec.get("exclude") or []):  # registry files, named up front
            missing = missing_source(excluded, labelled=True)
            if missing:
                raise TraitscopeError(f"prompt_sets.{name}.exclude[{i}]: {missing}")
        if "label" in spec and spec.get("dataset") not in TAKES_LABEL:
            raise TraitscopeError(
                f"prompt_sets.{name}.label: a {spec.get('dataset')} set's rows carry their own labels, "
                f"which label would not change (only {' and '.join(TAKES_LABEL)} sets take one); remove it"
            )
        target = spec.get("match_length")
        if target is not None:
            require_prompt_set(f"prompt_sets.{name}.match_length", target, config)
            if target == name or spec.get("n") is not None:
                raise TraitscopeError(
                    f"prompt_sets.{name}: match_length draws one row per prompt of another set; "
                    "name a different set and remove n"
                )
    for i, capture in enumerate(config["captures"]):
        require_variant(f"captures[{i}]", capture["variant"], config)
        require_prompt_set(f"captures[{i}]", capture["prompt_set"], config)
    require_judge_models("judge", config.get("judge", {}), config)
    if config["steering_check"]["enabled"]:
        require_traits("steering_check.trait", [config["steering_check"]["trait"]], config)
    # experiments that read trait files find them from the config's checkout too
    resolved = {**config, "traits_dir": str(traits_dir)}
    plugins = registered()
    for name, section in config["experiments"].items():
        if section.get("enabled"):
            plugins[name].check_config(section, resolved)
    derived_capture(resolved, capture_requests(resolved))  # two experiments' settings for one set


def merge(base: Any, overlay: dict) -> dict:
    """`overlay` over `base` as Snakemake's update_config lays a --configfile over the
    Snakefile's config: mappings key by key (an empty one leaves what was there), anything else
    replaced."""
    out = dict(base) if isinstance(base, dict) else {}
    for key, value in overlay.items():
        if isinstance(value, dict):
            sub = out.get(key, {})
            out[key] = merge(sub, value) if value else sub
        else:
            out[key] = value
    return out


def load_config(paths: str | Path | list[str | Path], schema_path: str | Path | None = None) -> dict:
    """Read, merge in order (as `--configfile` does), schema-validate and cross-check config
    files, from any working folder.

    Relative paths in the config (traits_dir, chat_template files, data_mirror) are taken from
    the checkout holding the first.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
    files = []
    for path in paths:
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise TraitscopeError(f"{path}: expected a YAML mapping of config keys")
        files.append(data)
    overlays: dict = {}
    for data in files[1:]:  # Snakemake folds the --configfiles first, then lays them over the base
        overlays = merge(overlays, data)
    config = merge(files[0], overlays)
    schema = Path(schema_path) if schema_path else find_schema(paths[0].parent)
    source = " + ".join(map(str, paths))
    validate_config(config, schema, source)
    root = schema.parents[2]
    traits_dir = Path(config["traits_dir"])
    try:
        check(config, traits_dir if traits_dir.is_absolute() else root / traits_dir, root)
    except TraitscopeError as exc:  # name the files, as the workflow does
        raise TraitscopeError(f"{source}: {exc}") from None
    return config
