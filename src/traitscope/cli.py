"""`traitscope <stage>`: every pipeline stage as a subcommand that reads and writes files.

A rule, its subcommand and its library function share one name (rule `trait_vectors`,
`traitscope trait-vectors`, `traitscope.vectors.extraction.trait_vectors`). Settings
have no defaults here: the config schema owns them and the rules pass every value.
Experiments add their own subcommands (`add_commands` in their module). Bad input exits
with status 2 and one line on stderr naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from traitscope import summary
from traitscope.capture.settings import CaptureSettings
from traitscope.command_args import json_object, path_or_none
from traitscope.config import find_schema, load_config
from traitscope.data.registry import dataset_file
from traitscope.data.settings import TraitPromptSettings
from traitscope.data.traits import trait_prompts
from traitscope.errors import TraitscopeError
from traitscope.judge import add_judge_arguments, judge_from_args, trait_agreement, trait_judgements
from traitscope.judge.settings import AgreementSettings, JudgementSettings
from traitscope.judge.stages import truth_agreement
from traitscope.model.loading import ModelSpec, prepare_model
from traitscope.settings import StageParser, add_settings_argument
from traitscope.training.settings import FinetuneSettings
from traitscope.vectors.settings import (
    DrawSettings,
    ExtractionSettings,
    SteeringCheckSettings,
    TraitSummarySettings,
)

Add = Callable[[str, Callable[[argparse.Namespace], None], str], argparse.ArgumentParser]


def _prepare_model(a: argparse.Namespace) -> None:
    prepare_model(ModelSpec.from_config(a.variant, a.spec), a.out, a.base_manifest, a.adapter)


def _finetune(a: argparse.Namespace) -> None:
    from traitscope.training.finetune import finetune

    finetune(a.model, a.data, a.out, a.settings, device=a.device)


def _trait_prompts(a: argparse.Namespace) -> None:
    trait_prompts(a.trait_file, a.out, a.settings, a.trait, a.data_mirror, a.cache_dir)


def _prep_prompts(a: argparse.Namespace) -> None:
    from traitscope.data.prep import prep_prompts

    prep_prompts(a.spec, a.out, a.data_mirror, a.cache_dir, a.match_to)


def _dataset_file(a: argparse.Namespace) -> None:
    dataset_file(a.dataset, a.file, a.out, a.data_mirror, a.cache_dir)


def _capture(a: argparse.Namespace) -> None:
    from traitscope.capture.store import capture

    capture(a.model, a.prompts, a.out, a.settings, device=a.device)


def _trait_vectors(a: argparse.Namespace) -> None:
    from traitscope.vectors.extraction import trait_vectors

    trait_vectors(
        a.capture, a.prompts, a.out, a.meta, a.position, a.settings, a.variant, a.trait, a.filter_judgements
    )


def _trait_judgements(a: argparse.Namespace) -> None:
    judge = judge_from_args(a)
    try:
        trait_judgements(a.capture, a.prompts, a.trait_file, judge, a.settings, a.out)
    finally:
        judge.close()


def _trait_agreement(a: argparse.Namespace) -> None:
    trait_agreement(a.judgements, a.out, a.settings)


def _trait_truth_agreement(a: argparse.Namespace) -> None:
    judge = judge_from_args(a)
    try:
        truth_agreement(a.truth, a.trait_file, judge, a.out, a.settings)
    finally:
        judge.close()


def _trait_classifier_agreement(a: argparse.Namespace) -> None:
    from traitscope.judge.classifier_agreement import classifier_agreement

    classifier_agreement(a.prompts, a.capture, a.out, a.settings, a.judgements)


def _trait_filter(a: argparse.Namespace) -> None:
    from traitscope.vectors.filtering import trait_filter

    trait_filter(a.capture, a.prompts, a.judgements, a.out, a.position, a.settings)


def _trait_evaluation(a: argparse.Namespace) -> None:
    from traitscope.vectors.evaluation import trait_evaluation

    trait_evaluation(a.vectors, a.capture, a.prompts, a.out, a.png, a.position, a.trait, a.variant)


def _trait_set_arguments(p: argparse.ArgumentParser) -> None:
    """A trait stage's inputs: the captured trait set and its prompt set."""
    p.add_argument("--capture", required=True, help="the trait set's capture.json")
    p.add_argument("--prompts", required=True, help="the trait prompt set")


def _trait_draws(a: argparse.Namespace) -> None:
    from traitscope.vectors.draws import vector_draws

    vector_draws(a.capture, a.prompts, a.evaluation, a.out, a.position, a.settings, a.filter_judgements)


def _trait_summary(a: argparse.Namespace) -> None:
    from traitscope.vectors.evaluation import trait_summary

    trait_summary(a.evaluations, a.out, a.settings)


def _steering_check(a: argparse.Namespace) -> None:
    from traitscope.vectors.steering_check import steering_check

    steering_check(a.model, a.vectors, a.evaluation, a.trait_file, a.out, a.settings, a.prompts)


def _project(a: argparse.Namespace) -> None:
    from traitscope.vectors.projection import project
    from traitscope.vectors.trait_vector import TraitVector

    traits = [TraitVector.load(vec, ev, name) for name, vec, ev in a.trait]
    project(a.capture, traits, a.variant, a.prompt_set, a.out)


def _validate_config(a: argparse.Namespace) -> None:
    try:
        load_config(a.config, a.schema)
    except TraitscopeError as exc:
        try:
            schema = Path(a.schema) if a.schema else find_schema(Path(a.config[0]).parent)
        except TraitscopeError:
            raise exc from None
        base = schema.parents[2] / "config" / "config.yaml"
        if len(a.config) > 1 or not base.is_file() or base.resolve() == Path(a.config[0]).resolve():
            raise
        try:  # an overlay (config/experiments/*.yaml) is run on top of config/config.yaml
            load_config([base, *a.config], a.schema)
        except TraitscopeError:
            raise exc from None
        raise TraitscopeError(
            f"{a.config[0]} extends {base} and is valid on top of it, not alone: "
            f"traitscope validate-config {base} {a.config[0]}"
        ) from None
    print(f"{' + '.join(a.config)}: valid")


def _core_commands(add: Add) -> None:
    p = add("prepare-model", _prepare_model, "resolve a model source; convert GGUF to safetensors once")
    p.add_argument("--variant", required=True)
    p.add_argument("--spec", required=True, type=json_object, help="the variant's models: entry as JSON")
    p.add_argument("--out", required=True, help="output folder (manifest.json, weights/)")
    p.add_argument(
        "--base-manifest",
        type=path_or_none,
        default=None,
        help="LoRA and finetuned variants: the base's manifest",
    )
    p.add_argument(
        "--adapter", type=path_or_none, default=None, help="finetuned variants: finetune's adapter/"
    )

    p = add("finetune", _finetune, "LoRA finetune of a prepared variant on chat JSONL (resumable)")
    p.add_argument("--model", required=True, help="the base variant's manifest.json")
    p.add_argument("--data", required=True, help='chat JSONL: one {"messages": [...]} per line')
    p.add_argument("--out", required=True, help="output folder (adapter/, loss.json, loss.png, checkpoints/)")
    add_settings_argument(p, FinetuneSettings)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (unset: cuda when present)")

    p = add("trait-prompts", _trait_prompts, "a trait's contrastive prompt set (Parquet)")
    p.add_argument("--trait-file", required=True)
    p.add_argument("--trait", required=True, help="trait name <group>/<trait>")
    p.add_argument("--out", required=True)
    add_settings_argument(p, TraitPromptSettings)
    p.add_argument(
        "--data-mirror",
        type=path_or_none,
        default=None,
        help="prompt-contrast traits: the data mirror their prompt sources are read from",
    )
    p.add_argument("--cache-dir", default="results/cache", help="prompt-contrast traits: download cache")

    p = add("prep-prompts", _prep_prompts, "build a prompt-set Parquet from a dataset (or a data mirror)")
    p.add_argument("--spec", required=True, type=json_object, help="the prompt_sets: entry as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--data-mirror", type=lambda v: None if v == "none" else v, required=True)
    p.add_argument("--cache-dir", required=True, help="where downloads are kept")
    p.add_argument(
        "--match-to",
        type=path_or_none,
        default=None,
        help="match_length sets: the Parquet of the set whose prompt lengths are matched",
    )

    p = add("dataset-file", _dataset_file, "copy a registered dataset file (origin or data mirror) to a path")
    p.add_argument("--dataset", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--data-mirror", type=path_or_none, required=True)
    p.add_argument("--cache-dir", required=True, help="where downloads are kept")

    p = add("capture", _capture, "generate (optionally) and capture a prompt set into resumable shards")
    p.add_argument("--model", required=True, help="prepared model manifest.json")
    p.add_argument("--prompts", required=True, help="prompt-set Parquet")
    p.add_argument("--out", required=True, help="capture.json (shards are written beside it)")
    add_settings_argument(p, CaptureSettings)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (unset: cuda when present)")

    p = add("trait-vectors", _trait_vectors, "vectors per layer and method from a captured trait set")
    _trait_set_arguments(p)
    p.add_argument("--out", required=True, help="vectors .safetensors")
    p.add_argument("--meta", required=True, help="vectors metadata .json")
    p.add_argument("--position", required=True, help="the trait's pool (response_mean, last_prompt, ...)")
    add_settings_argument(p, ExtractionSettings)
    p.add_argument("--variant", required=True)
    p.add_argument("--trait", required=True)
    p.add_argument(
        "--filter-judgements",
        type=path_or_none,
        default=None,
        help="the trait's judgements.parquet: keep only pairs the judge passes at the settings' "
        "filter thresholds (default: none, all pairs)",
    )

    p = add("trait-judgements", _trait_judgements, "LLM-judge a trait set's captured responses")
    _trait_set_arguments(p)
    p.add_argument("--trait-file", required=True, help="the trait YAML (its judge_rubric)")
    add_judge_arguments(p)
    add_settings_argument(p, JudgementSettings)
    p.add_argument("--out", required=True, help="judgements.parquet")

    p = add("trait-agreement", _trait_agreement, "judge vs instructions on held-out answers (AUC)")
    p.add_argument("--judgements", required=True)
    p.add_argument("--out", required=True, help="judge_agreement.json")
    add_settings_argument(p, AgreementSettings)

    p = add("trait-truth-agreement", _trait_truth_agreement, "judge vs the written truth set (AUC)")
    p.add_argument("--truth", required=True, help="the trait's truth set (resources/judge_truth/...)")
    p.add_argument("--trait-file", required=True, help="the trait YAML (its judge_rubric, questions)")
    add_judge_arguments(p)
    add_settings_argument(p, AgreementSettings)
    p.add_argument("--out", required=True, help="judge_truth_agreement.json")

    p = add(
        "trait-classifier-agreement",
        _trait_classifier_agreement,
        "answer classifier (fitted on extraction answers) vs instructions on held-out answers (AUC)",
    )
    p.add_argument("--prompts", required=True, help="the persona trait's prompt set")
    p.add_argument("--capture", required=True, help="the trait set's capture.json (its answers)")
    p.add_argument("--out", required=True, help="judge_agreement.json (judge: classifier)")
    add_settings_argument(p, AgreementSettings)
    p.add_argument("--judgements", default=None, help="also write the held-out scores (Parquet)")

    p = add("trait-filter", _trait_filter, "judge-filtered extraction: survivors and AUCs with/without")
    p.add_argument("--capture", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--judgements", required=True)
    p.add_argument("--out", required=True, help="judge_filter.json")
    p.add_argument("--position", required=True, help="the trait's pool (response_mean, last_prompt, ...)")
    add_settings_argument(p, ExtractionSettings)

    p = add("trait-evaluation", _trait_evaluation, "held-out AUC and Cohen's d per layer; chosen layer")
    p.add_argument("--vectors", required=True)
    p.add_argument("--capture", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True, help="evaluation.json")
    p.add_argument("--png", required=True)
    p.add_argument("--position", required=True)
    p.add_argument("--variant", required=True)
    p.add_argument("--trait", required=True)

    p = add("trait-draws", _trait_draws, "refits of the chosen vector on resampled extraction questions")
    _trait_set_arguments(p)
    p.add_argument("--evaluation", required=True, help="evaluation.json: the chosen (method, layer)")
    p.add_argument("--out", required=True, help="draws.safetensors")
    p.add_argument("--position", required=True, help="the trait's pool (response_mean, last_prompt, ...)")
    add_settings_argument(p, DrawSettings)
    p.add_argument("--filter-judgements", type=path_or_none, default=None, help="as for trait-vectors")

    p = add("trait-summary", _trait_summary, "collect every trait's chosen layer and AUC")
    p.add_argument("evaluations", nargs="+", help="evaluation.json files")
    p.add_argument("--out", required=True)
    add_settings_argument(p, TraitSummarySettings)

    p = add("steering-check", _steering_check, "does adding the vector raise the projection?")
    p.add_argument("--model", required=True)
    p.add_argument("--vectors", required=True)
    p.add_argument("--evaluation", required=True)
    p.add_argument("--trait-file", required=True)
    p.add_argument("--out", required=True)
    add_settings_argument(p, SteeringCheckSettings)
    p.add_argument(
        "--prompts",
        type=path_or_none,
        required=True,
        help="a prompt-contrast trait's prompt set (its held-out negatives are steered), else none",
    )

    p = add("project", _project, "project captured activations onto trait vectors (Parquet)")
    p.add_argument("--capture", required=True, help="capture.json")
    p.add_argument("--variant", required=True)
    p.add_argument("--prompt-set", required=True, help="the prompt set's name (for error messages)")
    p.add_argument(
        "--trait",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "VECTORS", "EVALUATION"),
        help="a trait's name, vectors.safetensors and evaluation.json (repeat per trait)",
    )
    p.add_argument("--out", required=True, help="projections Parquet")

    p = add("validate-config", _validate_config, "check config files against the schema (from any folder)")
    p.add_argument("config", nargs="+", help="config files, merged in order as by --configfile")
    p.add_argument("--schema", default=None, help="default: workflow/schemas of the config's checkout")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand; only the core ones when `command` is one of them, since importing the
    experiment modules (plotting, statistics) costs seconds in each of a run's many jobs."""
    parser = StageParser(prog="traitscope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    _core_commands(add)
    summary.add_commands(add)
    if command in sub.choices:
        return parser
    from traitscope.experiments.contract import registered

    for plugin in registered().values():
        plugin.add_commands(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # variable batch shapes fragment the CUDA caching allocator; expandable segments avoid
    # re-allocating per new shape (measured: 115K -> 162K tok/s, benchmarks/results/)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        args.func(args)
    except TraitscopeError as exc:
        print(f"traitscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
