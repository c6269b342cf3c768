"""The experiment plug-in contract, and the registry that finds the plug-ins.

An experiment is a module (or package) that owns everything about itself: its config section's
schema fragment, its Snakemake rules file, its CLI subcommands, its analysis and figures, and
its criteria in the run's summary table. The core (config check, CLI, Snakefile, summary) loops
over `registered()` and names no experiment, so adding one touches no core file:

- built-ins are the modules and packages under `traitscope.experiments`;
- others are importable modules named in TRAITSCOPE_EXPERIMENTS (comma-separated), e.g. a
  lab's own experiment on PYTHONPATH. Their config section is `experiments.<NAME>`.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from traitscope.errors import TraitscopeError

if TYPE_CHECKING:
    from traitscope.summary.records import Criterion, Result

PLUGINS_ENV = "TRAITSCOPE_EXPERIMENTS"
# the module-level names of the contract, checked when a plug-in registers
REQUIRED = ("SECTION", "check_config", "add_commands", "targets", "result_files", "criteria")


@dataclass(frozen=True)
class Section:
    """An experiment's part of the summary table."""

    title: str
    planned: tuple[str, ...]  # its criteria as listed when the experiment is not enabled
    order: int  # where the section stands in the table (lower first)


@runtime_checkable
class Experiment(Protocol):
    """What an experiment module provides, at module level. Optional: NAME (default: the module's
    last name), RULES and SCHEMA (default: workflow/rules/experiments/<NAME>.smk and
    workflow/schemas/experiments/<NAME>.schema.yaml of this checkout), and
    `capture_requests(section) -> list[CaptureRequest]` (default: none; the captures the run
    makes for it, checked against every other experiment's at validation)."""

    SECTION: Section | None  # None: it adds no criteria to the table

    def check_config(self, section: dict, config: dict) -> None:
        """Cross-field checks of its validated config section; a TraitscopeError names the key."""

    def add_commands(self, add: Callable[..., Any]) -> None:
        """Its `traitscope <stage>` subcommands (add(name, handler, help) -> parser)."""

    def targets(self, section: dict) -> list[str]:
        """The files its enabled section asks the run to make."""

    def result_files(self, section: dict) -> dict[str, str]:
        """{key: result file} the summary reads (the keys `criteria` receives)."""

    def criteria(self, results: dict[str, Result]) -> list[Criterion]:
        """Its rows of the summary table, from its result files."""


@dataclass(frozen=True)
class CaptureRequest:
    """(variant, prompt set) captures an experiment asks for: with the capture settings its
    derived set needs (None or empty: the set's own), projected onto every trait unless the
    experiment reads the activations itself (`project=False`: an SAE's training tokens)."""

    pairs: tuple[tuple[str, str], ...]
    settings: dict | None = None
    project: bool = True


def capture_requests(config: dict) -> list[tuple[str, CaptureRequest]]:
    """(experiment, request) of every enabled experiment, in the config's order of experiments."""
    plugins = registered()
    return [
        (name, request)
        for name, section in config["experiments"].items()
        if section.get("enabled")
        for request in getattr(plugins[name], "capture_requests", lambda _: [])(section)
    ]


def projected_captures(config: dict, requests: list[tuple[str, CaptureRequest]]) -> list[tuple[str, str]]:
    """(variant, prompt set) pairs the run captures and projects onto every trait: the config's
    `captures:`, then the experiments' (each pair once)."""
    pairs = [(c["variant"], c["prompt_set"]) for c in config["captures"]]
    pairs += [pair for _, request in requests if request.project for pair in request.pairs]
    return list(dict.fromkeys(pairs))


def derived_capture(config: dict, requests: list[tuple[str, CaptureRequest]]) -> dict[str, dict | None]:
    """prompt set -> the capture settings an experiment derives for it (None: the set's own).
    A set asked for with two different settings is refused: its one capture per variant cannot
    give both, and whichever came first would silently serve the other."""
    derived: dict[str, dict | None] = {c["prompt_set"]: None for c in config["captures"]}
    asker = {c["prompt_set"]: "captures" for c in config["captures"]}
    for name, request in requests:
        settings = request.settings or None
        for _variant, prompt_set in request.pairs:
            asked = derived.setdefault(prompt_set, settings)
            first = asker.setdefault(prompt_set, f"experiments.{name}")
            if asked != settings:
                own = "its own capture settings"
                raise TraitscopeError(
                    f"prompt set {prompt_set!r} is asked for by {first} with "
                    f"{json.dumps(asked) if asked else own} and by experiments.{name} with "
                    f"{json.dumps(settings) if settings else own}; one capture cannot give both, "
                    "so name a separate prompt set for one of them"
                )
    return derived


def plugin_name(module: ModuleType) -> str:
    return getattr(module, "NAME", module.__name__.rsplit(".", 1)[-1])


def _check(module: ModuleType) -> ModuleType:
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise TraitscopeError(
            f"experiment plug-in {module.__name__} lacks {', '.join(missing)}; "
            "see traitscope.experiments.contract"
        )
    return module


def registered() -> dict[str, ModuleType]:
    """Every experiment plug-in by name: the built-ins, then TRAITSCOPE_EXPERIMENTS's modules."""
    import traitscope.experiments as package

    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        if all(hasattr(module, name) for name in REQUIRED):  # helpers (this module) are not plug-ins
            found[plugin_name(module)] = module
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = _check(importlib.import_module(name))
        except ImportError as exc:
            raise TraitscopeError(
                f"{PLUGINS_ENV}: cannot import {name!r} ({exc}); fix the name or PYTHONPATH"
            ) from None
        found[plugin_name(module)] = module
    return found


def rules_file(module: ModuleType, workflow_dir: str | Path) -> Path:
    """The plug-in's Snakemake rules file."""
    return Path(
        getattr(module, "RULES", None)
        or Path(workflow_dir) / "rules" / "experiments" / f"{plugin_name(module)}.smk"
    )


def schema_file(module: ModuleType, schema_dir: str | Path) -> Path:
    """The plug-in's schema fragment (its `experiments.<NAME>` section)."""
    default = Path(schema_dir) / "experiments" / f"{plugin_name(module)}.schema.yaml"
    return Path(getattr(module, "SCHEMA", None) or default)


def among_targets(targets: list[str], names: dict[str, str]) -> dict[str, str]:
    """{key: the target whose file name is names[key]}: a plug-in's `result_files` from its
    targets, so a result's path is spelled once (in `targets`); a key whose file is not among
    them (a part of the experiment switched off) is left out."""
    return {key: t for key, name in names.items() for t in targets if t.rsplit("/", 1)[-1] == name}
