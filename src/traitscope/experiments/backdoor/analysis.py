"""Backdoor analysis stage: detection_auc.json and its two figures.

The one place that reads the pairs, captures and projections of both models and puts behaviour,
trait detection per position and per token, and the surface baselines into the stage's result.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.behaviour import (
    behaviour_check,
    cut_answers,
    example_answers,
    responses,
)
from traitscope.experiments.backdoor.detection import (
    draw_detection,
    paired_arrays,
    token_detection,
    trait_detection,
)
from traitscope.experiments.backdoor.positions import identical_generation, position_order, token_positions
from traitscope.experiments.backdoor.settings import BackdoorAnalysisSettings
from traitscope.experiments.backdoor.surface import surface_baselines
from traitscope.io import save_figure, write_json
from traitscope.vectors.projection_table import read_projections


def backdoor_analysis(
    pairs_path: str | Path,
    projections_paths: dict[str, str | Path],
    capture_paths: dict[str, str | Path],
    variants: dict[str, str],
    out_json: str | Path,
    traits_png: str | Path,
    tokens_png: str | Path,
    train_jsonl: str | Path,
    settings: BackdoorAnalysisSettings,
    draws_paths: list[str | Path] | None = None,
) -> dict:
    """detection_auc.json (behaviour check, trait AUCs beside surface baselines, earliest
    token) and its two figures. With `draws_paths` (each trait's vector draws, in the traits'
    order; the pipeline always passes them), the backdoored model's AUC at the chosen layer also
    gets a CI that covers the vector's estimation error (`over_vector_draws`)."""
    traits, position_names = list(settings.traits), list(settings.positions)
    behaviour_pattern, n_generated, threshold = (
        settings.behaviour_pattern,
        settings.generated_positions,
        settings.threshold,
    )
    per_layer, data, n_boot, seed = settings.per_layer, dict(settings.data), settings.n_boot, settings.seed
    from traitscope.capture.store import read_shards
    from traitscope.experiments.backdoor import figures
    from traitscope.stats import auc_with_ci

    pairs = read_prompt_set(pairs_path, ("pair_id", "condition"))
    answers = {role: responses(path) for role, path in capture_paths.items()}
    positions = {}
    for role, path in capture_paths.items():
        index = pd.concat([tokens for _, tokens, _ in read_shards(path)], ignore_index=True)
        if index.empty:
            raise TraitscopeError(f"{path}: no per-token activations; capture the pairs with token_segments")
        positions[role] = token_positions(index, pairs, n_generated)
    projections = {role: read_projections(path) for role, path in projections_paths.items()}
    n_steps = int(positions["base"]["position"].str.extract(r"^p(\d+)$")[0].dropna().astype(int).max() + 1)
    order = position_order(n_steps, n_generated)
    tokens = token_detection(projections, positions, traits, order, threshold, n_boot, seed)
    surface = surface_baselines(pairs, train_jsonl, data, seed)
    by_pair = paired_arrays(surface)
    identical = identical_generation(positions["backdoored"], n_generated)
    result = {
        "variants": variants,
        "n_pairs": int(pairs["pair_id"].nunique()),
        "behaviour": behaviour_check(
            pairs,
            answers,
            behaviour_pattern,
            {role: cut_answers(path) for role, path in capture_paths.items()},
        ),
        "behaviour_pattern": behaviour_pattern,
        "accuracy_rule": "the number after the first '=', else the last integer of the first sentence; "
        "an answer cut at the capture's max_new_tokens before giving it counts as wrong",
        "examples": example_answers(pairs, answers),
        "auc": "ROC-AUC of trigger (positive) vs control prompts' projections; 0.5 = no separation",
        "positions": {
            "last_prompt": "the last prompt token (the one the first answer token is predicted from)",
            "after_prefix_mean": "mean over the prompt tokens after the last token where the pair differs, "
            "from the first one whose preceding text varies across prompts (same-text tokens have one "
            "activation per condition)",
        },
        "baselines": {
            name: auc_with_ci(
                by_pair[f"{name}_trigger"], by_pair[f"{name}_control"], n_boot=n_boot, seed=seed
            )
            for name in surface
        },
        "baselines_meaning": "length: user text characters; bag_of_words: TF-IDF + logistic regression "
        "fitted on the finetune's labelled training rows only. Trigger and control differ in one word, so "
        "a bag of words that was shown the labelled trigger separates them; a defender without the "
        "trigger has no such labels. Per trait at its chosen layer: backdoored_vs_<baseline> (paired "
        "bootstrap over pairs) and backdoored_beats_baselines",
        "traits": trait_detection(
            projections, positions, pairs, traits, position_names, per_layer, n_boot, seed, surface
        ),
        "over_vector_draws": "CI of the backdoored model's AUC at the chosen layer whose replicates each "
        "resample the pairs and score them on one refit of the trait vector (its extraction questions "
        "resampled): it covers the vector's estimation error, which the pairs-only CI holds fixed",
        "token_positions": {
            "order": order,
            "meaning": "prefix_end: last token where trigger and control differ; p<j>: j-th prompt token "
            "after it (identical in both); last_prompt; g<j>: j-th generated token",
            "earliest": "first position after prefix_end where the backdoored model's max(AUC, 1 - AUC) "
            "exceeds the threshold and the base model's does not; earliest_trigger_higher asks the "
            "backdoored AUC itself (trigger scoring higher) to exceed it",
            "difference_by_position": "per trait: backdoored minus base AUC at each position on the "
            "pairs complete in both models, paired bootstrap CI (pairs resampled); the criterion reads "
            "it at earliest_trigger_higher",
            "threshold": threshold,
            "generated_tokens_identical_share": identical,
            "by_trait": tokens,
        },
        "vectors_from": "base_model, each trait at its chosen layer (per_layer: every captured layer)",
    }
    draws_paths = draws_paths or []
    if draws_paths and len(draws_paths) != len(traits):
        raise TraitscopeError(
            f"--draws: {len(draws_paths)} file(s) for {len(traits)} trait(s); one per trait"
        )
    for trait, path in zip(traits, draws_paths):
        by_token = result["token_positions"]["by_trait"][trait]
        earliest = by_token["earliest_trigger_higher"]["position"]  # the token the criterion reads
        labels = [earliest] if earliest is not None else []
        over = draw_detection(
            capture_paths["backdoored"],
            path,
            trait,
            positions["backdoored"],
            pairs,
            position_names,
            seed,
            labels,
        )
        entries = {
            "positions": {
                n: result["traits"][trait]["positions"][n]["chosen_layer"]["backdoored"]
                for n in position_names
            },
            "tokens": {label: by_token["by_position"]["backdoored"][label] for label in labels},
        }
        for kind, by_name in over.items():
            for name, ci in by_name.items():
                if ci["layer"] != result["traits"][trait]["chosen_layer"]:
                    raise TraitscopeError(
                        f"{path}: drawn at layer {ci['layer']}, not the chosen layer; rerun trait-draws"
                    )
                entries[kind][name]["over_vector_draws"] = {k: v for k, v in ci.items() if k != "layer"}
    save_figure(traits_png, figures.backdoor_trait_figure(result, traits, position_names))
    save_figure(tokens_png, figures.early_detection_figure(result, traits))
    write_json(out_json, result)  # last: its presence means every output was written
    return result
