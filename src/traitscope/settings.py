"""Stage settings, spelled once: the config schema names every setting and its default.

A stage's settings are one frozen dataclass whose `SECTION` points at its config section in
the schema. The rule passes that validated section whole, as one JSON argument
(`--settings`), and the stage builds its dataclass from it (`parse`); tests build the same
dataclass from the schema's defaults (`from_schema`). Nothing renders a setting flag by flag
or parses it back, so a new setting touches the schema and one dataclass field.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from dataclasses import fields
from functools import cache
from typing import Any, ClassVar, Protocol, TypeVar

from traitscope.config import _default_filling, find_schema, invalid_value, load_core_schema, load_schema
from traitscope.errors import TraitscopeError


class Settings(Protocol):
    """A settings dataclass: its fields are keys of the config section `SECTION` points at."""

    SECTION: ClassVar[str]  # JSON pointer into the schema, e.g. "#/definitions/capture"


S = TypeVar("S", bound=Settings)


def _frozen(value: Any) -> Any:
    """Lists become tuples, so a settings object cannot be changed in place through a list."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def build(cls: type[S], section: Mapping[str, Any], where: str) -> S:
    """`cls` from a config section. Keys the stage does not read (a section also holds what
    only the DAG reads, e.g. `enabled`) are left out; a missing one is a one-line error."""
    if not isinstance(section, Mapping):
        raise TraitscopeError(f"{where}: expected a JSON object of the config section {cls.SECTION}")
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    missing = [n for n in names if n not in section]
    if missing:
        raise TraitscopeError(
            f"{where}: missing setting(s) {', '.join(missing)}; pass the whole validated config "
            f"section {cls.SECTION} (its schema has the defaults)"
        )
    return cls(**{n: _frozen(section[n]) for n in names})


def parse(cls: type[S], text: str) -> S:
    """`cls` from the `--settings` JSON text."""
    try:
        section = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraitscopeError(f"--settings: not JSON ({exc.msg} at column {exc.colno})") from None
    settings = build(cls, section, "--settings")
    check_values(cls, section, "--settings")
    return settings


def check_values(cls: type[Settings], section: Mapping[str, Any], where: str) -> None:
    """Each setting `cls` reads against its schema entry: a hand-written `--settings` (a rule's
    is validated with the config) stops here in one line, not on a TypeError mid-stage. A core
    section reads the core schema alone; an experiment's section needs the fragments, whose
    registration imports every experiment, as an experiment's subcommand has by then."""
    import jsonschema

    root = _schema() if cls.SECTION.startswith(EXPERIMENTS) else _core_schema()
    validator = jsonschema.validators.validator_for(root)(root)
    properties = _node(root, cls.SECTION).get("properties", {})
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in properties:
            error = jsonschema.exceptions.best_match(
                validator.evolve(schema=properties[f.name]).iter_errors(section[f.name])
            )
            if error is not None:
                raise invalid_value(where, [f.name], error)


def as_json(cls: type[Settings], section: Mapping[str, Any]) -> str:
    """The `--settings` argument a rule passes: the section's keys `cls` reads, sorted, so the
    text changes (and Snakemake reruns the job) only when one of the stage's settings does."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return json.dumps({k: v for k, v in section.items() if k in names}, sort_keys=True)


@cache
def _schema() -> dict:
    return load_schema(find_schema())


@cache
def _core_schema() -> dict:
    return load_core_schema(find_schema())


EXPERIMENTS = "#/properties/experiments/"  # the sections of the experiments' fragments


def section_schema(pointer: str) -> dict:
    """The schema node a `SECTION` pointer names."""
    return _node(_schema(), pointer)


def _node(root: dict, pointer: str) -> Any:
    node: Any = root
    for part in pointer.removeprefix("#/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]  # oneOf/1: a branch
    return node


def schema_defaults(pointer: str) -> dict[str, Any]:
    """The section as validation fills it from nothing: every default the schema spells."""
    import jsonschema

    root = _schema()
    validator = _default_filling(jsonschema.validators.validator_for(root))(root)
    section: dict[str, Any] = {}
    for _ in validator.evolve(schema=section_schema(pointer)).iter_errors(section):
        pass  # required keys without a default are the caller's (from_schema's overrides)
    return section


def from_schema(cls: type[S], **overrides: Any) -> S:
    """`cls` at the schema's defaults, with `overrides` (tests, benchmarks): the one factory."""
    return build(cls, {**schema_defaults(cls.SECTION), **overrides}, f"{cls.__name__} defaults")


def fields_help(cls: type[Settings]) -> str:
    """One line per field: name, schema default and description (for `--help`). Every key is
    required on the command line, so the default is labelled the config's."""
    props = section_schema(cls.SECTION).get("properties", {})
    lines = [
        f"--settings: a JSON object, the config section {cls.SECTION}; give every key (the "
        "workflow passes them all; the config's default is shown):"
    ]
    for f in fields(cls):  # type: ignore[arg-type]
        prop = props.get(f.name, {})
        default = f" (config default {json.dumps(prop['default'])})" if "default" in prop else ""
        lines.append(f"  {f.name}{default}: {prop.get('description', '')}".rstrip(": "))
    return "\n".join(lines)


class StageParser(argparse.ArgumentParser):
    """An argument parser whose `--help` documents its settings dataclass, read from the schema
    only when help is asked for (loading the schema imports every plug-in)."""

    settings_help: Callable[[], str] | None = None

    def format_help(self) -> str:
        text = super().format_help()
        return f"{text}\n{self.settings_help()}\n" if self.settings_help else text


def add_settings_argument(parser: argparse.ArgumentParser, cls: type[Settings]) -> None:
    """`--settings JSON` for `cls`, documented field by field in the stage's `--help`."""

    def settings(text: str) -> Settings:
        try:
            return parse(cls, text)
        except TraitscopeError as exc:  # argparse's own one-line error, exit status 2
            raise argparse.ArgumentTypeError(str(exc).removeprefix("--settings: ")) from None

    parser.add_argument(
        "--settings",
        type=settings,
        required=True,
        help=f"the config section {cls.SECTION} as JSON (its fields below)",
    )
    if isinstance(parser, StageParser):
        parser.settings_help = lambda: fields_help(cls)
