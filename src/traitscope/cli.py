"""`traitscope <stage>`: every pipeline stage as a subcommand that reads and writes files.

Snakemake rules call these; users can too. Bad input exits with status 2 and one line
on stderr naming the file and the fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence

from traitscope.errors import TraitscopeError


def _prepare_model(a: argparse.Namespace) -> None:
    from traitscope.models import ModelSpec, prepare

    prepare(ModelSpec.from_config(a.variant, json.loads(a.spec)), a.out, a.base_manifest)


def _trait_responses(a: argparse.Namespace) -> None:
    from traitscope.responses import ResponseSettings, run

    settings = ResponseSettings(
        max_new_tokens=a.max_new_tokens,
        pairs_per_question=a.pairs_per_question,
        n_extraction=a.n_extraction,
        n_evaluation=a.n_evaluation,
        temperature=a.temperature,
        seed=a.seed,
        max_tokens=a.max_tokens,
    )
    run(a.model, a.trait_file, a.out, settings, a.trait)


def _trait_activations(a: argparse.Namespace) -> None:
    from traitscope.extraction import capture

    capture(a.model, a.responses, a.out, a.pools, a.max_tokens)


def _trait_vectors(a: argparse.Namespace) -> None:
    from traitscope.extraction import build_vectors

    build_vectors(a.activations, a.responses, a.out, a.meta, a.position, a.probe_c, a.model_name, a.trait)


def _trait_evaluate(a: argparse.Namespace) -> None:
    from traitscope.evaluation import evaluate

    evaluate(a.vectors, a.activations, a.responses, a.out, a.png, a.position, a.trait, a.model_name)


def _trait_summary(a: argparse.Namespace) -> None:
    from traitscope.evaluation import summarize

    summarize(a.evaluations, a.out, a.threshold)


def _steering_check(a: argparse.Namespace) -> None:
    from traitscope.steering import check

    check(
        a.model, a.vectors, a.evaluation, a.trait_file, a.out, a.coefficient, a.max_new_tokens, a.max_tokens
    )


def _prep(a: argparse.Namespace) -> None:
    from traitscope.prep import prepare_prompt_set

    prepare_prompt_set(json.loads(a.spec), a.out, a.data_mirror, a.cache_dir)


def _capture(a: argparse.Namespace) -> None:
    from traitscope.capture_set import CaptureSettings, capture_prompt_set, layers_from_evaluations

    layers = sorted(set(a.layers or []) | set(layers_from_evaluations(a.layers_from or [])))
    settings = CaptureSettings(
        layers=tuple(layers),
        pools=tuple(a.pools),
        token_segments=tuple(a.token_segments),
        keep_all_tokens=a.keep_all_tokens,
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        seed=a.seed,
        max_tokens=a.max_tokens,
        padding_side=a.padding_side,
        shard_size=a.shard_size,
        storage_dtype=a.storage_dtype,
        compile=a.compile,
    )
    capture_prompt_set(a.model, a.prompts, a.out, settings, device=a.device)


def _project(a: argparse.Namespace) -> None:
    from traitscope.projection import load_trait_vector, project_capture

    traits = [load_trait_vector(name, vec, ev) for name, vec, ev in a.trait]
    project_capture(a.capture, traits, a.variant, a.out)


def _prefill_analysis(a: argparse.Namespace) -> None:
    from traitscope.prefill import analyse

    analyse(a.projections, a.conditions, a.traits, a.out, a.grid_png, a.trajectory_png, a.n_boot, a.seed)


def _split_beavertails(a: argparse.Namespace) -> None:
    from traitscope.external import split_beavertails

    split_beavertails(a.prompts, a.out_dir, a.n_per_category, a.seed)


def _external_analysis(a: argparse.Namespace) -> None:
    from traitscope.external import run

    harmbench = None
    if a.harmbench_harmful:
        harmbench = {
            "harmful_proj": a.harmbench_harmful,
            "harmless_proj": a.harmbench_harmless,
            "harmful_prompts": a.harmbench_prompts,
        }
    beavertails = None
    if a.beavertails_group:
        beavertails = {
            "proj_by_group": {g: [p] for g, p, _ in a.beavertails_group},
            "prompts_by_group": {g: q for g, _, q in a.beavertails_group},
        }
    run(
        a.out_dir,
        a.traits,
        a.position_harmbench,
        a.position_beavertails,
        harmbench,
        beavertails,
        a.n_boot,
        a.seed,
    )


def _validate_config(a: argparse.Namespace) -> None:
    from traitscope.config import load_config

    load_config(a.config, a.schema, a.traits_dir)
    print(f"{a.config}: valid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="traitscope", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = add("prepare-model", _prepare_model, "resolve a model source; convert GGUF to safetensors once")
    p.add_argument("--variant", required=True)
    p.add_argument("--spec", required=True, help="the variant's models: entry as JSON")
    p.add_argument("--out", required=True, help="output folder (manifest.json, weights/)")
    p.add_argument("--base-manifest", default=None, help="LoRA variants: the base variant's manifest.json")

    p = add("trait-responses", _trait_responses, "generate contrastive responses for one trait")
    p.add_argument("--model", required=True, help="prepared model manifest.json")
    p.add_argument("--trait-file", required=True)
    p.add_argument("--trait", default=None, help="trait name <group>/<trait> (default: from the path)")
    p.add_argument("--out", required=True)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--pairs-per-question", type=int, default=2)
    p.add_argument("--n-extraction", type=int, default=None)
    p.add_argument("--n-evaluation", type=int, default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=8192, help="token budget per padded batch")

    p = add("trait-activations", _trait_activations, "capture pooled activations at every layer")
    p.add_argument("--model", required=True)
    p.add_argument("--responses", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pools", nargs="+", default=["response_mean", "last_prompt"])
    p.add_argument("--max-tokens", type=int, default=8192)

    p = add("trait-vectors", _trait_vectors, "mean-difference and probe vectors per layer")
    p.add_argument("--activations", required=True)
    p.add_argument("--responses", required=True)
    p.add_argument("--out", required=True, help="vectors .safetensors")
    p.add_argument("--meta", required=True, help="vectors metadata .json")
    p.add_argument("--position", default="response_mean")
    p.add_argument("--probe-c", type=float, default=1.0)
    p.add_argument("--model-name", default="")
    p.add_argument("--trait", default="")

    p = add("trait-evaluate", _trait_evaluate, "held-out AUC and Cohen's d per layer; chosen layer")
    p.add_argument("--vectors", required=True)
    p.add_argument("--activations", required=True)
    p.add_argument("--responses", required=True)
    p.add_argument("--out", required=True, help="evaluation.json")
    p.add_argument("--png", required=True)
    p.add_argument("--position", default="response_mean")
    p.add_argument("--model-name", default="")
    p.add_argument("--trait", default="")

    p = add("trait-summary", _trait_summary, "collect every trait's chosen layer and AUC")
    p.add_argument("evaluations", nargs="+", help="evaluation.json files")
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float, default=0.9)

    p = add("steering-check", _steering_check, "does adding the vector raise the projection?")
    p.add_argument("--model", required=True)
    p.add_argument("--vectors", required=True)
    p.add_argument("--evaluation", required=True)
    p.add_argument("--trait-file", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--coefficient", type=float, default=4.0)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=8192)

    p = add("prep", _prep, "build a prompt-set Parquet from a dataset (or a data mirror)")
    p.add_argument("--spec", required=True, help="the prompt_sets: entry as JSON")
    p.add_argument("--out", required=True)
    p.add_argument("--data-mirror", default=None, help="read datasets from this folder; never download")
    p.add_argument("--cache-dir", default="results/cache", help="where downloads are kept")

    p = add("capture", _capture, "capture activations of a prompt set (resumable shards)")
    p.add_argument("--model", required=True, help="prepared model manifest.json")
    p.add_argument("--prompts", required=True, help="prompt-set Parquet")
    p.add_argument("--out", required=True, help="capture.json (shards are written beside it)")
    p.add_argument("--layers", type=int, nargs="*", help="decoder layers to capture")
    p.add_argument("--layers-from", nargs="*", help="evaluation.json files: capture their chosen layers")
    p.add_argument(
        "--pools", nargs="+", default=["last_prompt", "prompt_mean", "prefill_mean", "response_mean"]
    )
    p.add_argument("--token-segments", nargs="*", default=[], help="keep per-token activations of these")
    p.add_argument("--keep-all-tokens", action="store_true", help="keep every token's activations")
    p.add_argument("--max-new-tokens", type=int, default=0, help="> 0: generate and capture a response")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=16384, help="token budget per padded batch")
    p.add_argument("--padding-side", choices=["left", "right"], default="right")
    p.add_argument("--shard-size", type=int, default=512, help="prompts per resumable shard")
    p.add_argument("--storage-dtype", choices=["float32", "bfloat16", "float16"], default="float16")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when present)")
    p.add_argument(
        "--compile",
        choices=["auto", "yes", "no"],
        default="auto",
        help="torch.compile the blocks (auto: on GPU)",
    )

    p = add("project", _project, "project captured activations onto trait vectors (Parquet)")
    p.add_argument("--capture", required=True, help="capture.json")
    p.add_argument("--variant", required=True)
    p.add_argument(
        "--trait",
        nargs=3,
        action="append",
        required=True,
        metavar=("NAME", "VECTORS", "EVALUATION"),
        help="a trait's name, vectors.safetensors and evaluation.json (repeat per trait)",
    )
    p.add_argument("--out", required=True, help="projections Parquet")

    p = add("prefill-analysis", _prefill_analysis, "prefill attack: 2x2 statistics and trajectories")
    p.add_argument("--projections", required=True)
    p.add_argument("--conditions", required=True, help="the conditions prompt set (Parquet)")
    p.add_argument("--traits", nargs="+", required=True)
    p.add_argument("--out", required=True, help="condition_comparison.json")
    p.add_argument("--grid-png", required=True)
    p.add_argument("--trajectory-png", required=True)
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)

    p = add("split-beavertails", _split_beavertails, "one prompt set per BeaverTails harm category + safe")
    p.add_argument("--prompts", required=True, help="BeaverTails prompt set (traitscope prep)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--n-per-category", type=int, default=None, help="seeded sample per group (default: all)")
    p.add_argument("--seed", type=int, default=0)

    p = add("external-analysis", _external_analysis, "HarmBench and BeaverTails harm-detection statistics")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--traits", nargs="+", required=True)
    p.add_argument("--harmbench-harmful", nargs="*", default=[], help="projections of HarmBench behaviours")
    p.add_argument("--harmbench-harmless", nargs="*", default=[], help="projections of harmless controls")
    p.add_argument("--harmbench-prompts", default=None, help="the HarmBench prompt set (for categories)")
    p.add_argument(
        "--beavertails-group",
        nargs=3,
        action="append",
        default=[],
        metavar=("GROUP", "PROJECTIONS", "PROMPTS"),
        help="one BeaverTails group (repeat)",
    )
    p.add_argument("--position-harmbench", default="last_prompt")
    p.add_argument("--position-beavertails", default="prefill_mean")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)

    p = add("validate-config", _validate_config, "check a config file against the schema")
    p.add_argument("config")
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml")
    p.add_argument("--traits-dir", default="resources/traits")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # variable batch shapes fragment the CUDA caching allocator; expandable segments avoid
    # re-allocating per new shape (measured: 115K -> 162K tok/s, benchmarks/results/)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TraitscopeError as exc:
        print(f"traitscope {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
