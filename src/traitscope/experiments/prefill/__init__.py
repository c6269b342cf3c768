"""Prefill attack: do activations reveal harm recognition under forced compliance?

Four conditions: C1 harmful, C2 harmful + compliance prefill, C3 benign, C4 benign +
prefill. Each trait is scored at its chosen layer. Which position each comparison uses:

- C2 vs C4 (the key one): mean over the prefill tokens: identical text, different prompts.
- C1 vs C3: the last prompt token (neither has a prefill).
- C1 vs C2: the generated response: does a forced "Sure" suppress what comes next? The same
  requests with and without the prefill, so paired by request (d_z).
- 2x2 interaction (harmful x prefill): the generated response, present in all four. Prefill is
  within requests and harm between them, so the test compares the per-request prefill effects
  (C2 - C1, C4 - C3) between harmful and benign requests (`within_interaction`).

Per-token trajectories run from the last prompt token through the prefill into the first
generated tokens (position 0 = last prompt token).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from traitscope import baselines
from traitscope.command_args import add_own_bow_argument, path_or_none
from traitscope.config import (
    require_contrast_trait,
    require_distinct_sets,
    require_prompt_set,
    require_traits,
    require_variant,
)
from traitscope.data.prompts import read_prompt_set, require_side, user_texts
from traitscope.data.traits import contrast_pool, trait_path
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import CaptureRequest, Section, among_targets
from traitscope.experiments.prefill import figures
from traitscope.experiments.prefill.comparisons import (
    COMPARISONS,
    PAIRED,
    chosen_rows,
    compare_conditions,
    per_request,
    pooled_scores,
    prefill_interaction,
)
from traitscope.experiments.prefill.criteria import PREFILL_D_MIN, prefill_criteria
from traitscope.experiments.prefill.settings import PrefillAnalysisSettings, PrefillConditionsSettings
from traitscope.io import read_table, save_figure, write_json, write_parquet
from traitscope.paths import projections_path, prompts_path
from traitscope.settings import add_settings_argument
from traitscope.stats import compare_groups, first_divergence, mean_with_ci
from traitscope.vectors.projection_table import read_projections

OUT_DIR = "results/prefill"


def conditions_2x2(harmful: pd.DataFrame, harmless: pd.DataFrame, prefills: Sequence[str]) -> pd.DataFrame:
    """The prefill attack's conditions: harmful / benign prompts, without and with each prefill.

    C1 harmful, C2 harmful + prefill, C3 benign, C4 benign + prefill; the benign set is
    matched in count to the harmful one. With several prefills, C2 and C4 repeat per prefill.
    """
    if not prefills:
        raise TraitscopeError("prefill conditions: give at least one prefill")
    n = min(len(harmful), len(harmless))
    if n < 2:
        raise TraitscopeError(f"prefill conditions: need >= 2 harmful and harmless prompts, have {n}")
    rows = []
    for kind, table in (("harmful", harmful.head(n)), ("benign", harmless.head(n))):
        none, with_prefill = ("C1", "C2") if kind == "harmful" else ("C3", "C4")
        for r in table.itertuples():
            base = {
                "prompt": r.prompt,
                "source": r.source,
                "category": r.category,
                "label": int(kind == "harmful"),
            }
            rows.append(
                {
                    **base,
                    "prompt_id": f"{none}:{r.prompt_id}",
                    "condition": none,
                    "prefill": "",
                    "prefill_index": -1,
                }
            )
            for i, prefill in enumerate(prefills):
                rows.append(
                    {
                        **base,
                        "prompt_id": f"{with_prefill}:p{i}:{r.prompt_id}",
                        "condition": with_prefill,
                        "prefill": prefill,
                        "prefill_index": i,
                    }
                )
    return pd.DataFrame(rows)


def prefill_conditions(
    harmful: str | Path, harmless: str | Path, settings: PrefillConditionsSettings, out: str | Path
) -> pd.DataFrame:
    """Write the derived 2x2 prompt set from two prepared prompt sets."""
    parts = [read_prompt_set(p) for p in (harmful, harmless)]
    for path, part, is_harmful in zip((harmful, harmless), parts, (True, False)):
        if "prompt" not in part.columns:
            raise TraitscopeError(f"{path}: the prefill conditions need a 'prompt' column")
        require_side(path, part, is_harmful)
    table = conditions_2x2(*parts, settings.prefills)
    write_parquet(out, table)
    return table


def capture_requests(section: dict) -> list[CaptureRequest]:
    """The 2x2 conditions, answered by the variant at the experiment's capture settings."""
    return [CaptureRequest(((section["variant"], section["prompt_set"]),), section["capture"])]


def targets(section: dict) -> list[str]:
    """The files the experiment ends in (rule all asks for them when enabled)."""
    return [
        f"{OUT_DIR}/{name}"
        for name in ("condition_comparison.json", "2x2_grid.png", "trajectory_divergence.png")
    ]


def contrast_traits(section: dict, config: dict) -> list[str]:
    """The analysed prompt-contrast traits: each stands beside a bag of words fitted on its own rows."""
    return [t for t in section["traits"] if contrast_pool(trait_path(config["traits_dir"], t))]


def analysis_inputs(section: dict, config: dict) -> dict[str, str | list[str]]:
    """Named inputs of the analysis rule: the conditions, their projections, the trait prompt
    set the default bag of words is fitted on (when on) and each prompt-contrast trait's own."""
    inputs: dict[str, str | list[str]] = {
        "conditions": prompts_path(section["prompt_set"]),
        "projections": projections_path(section["variant"], section["prompt_set"]),
        "own_bow": [prompts_path(f"traits/{t}") for t in contrast_traits(section, config)],
    }
    if section["bag_of_words"]:
        inputs["bow"] = prompts_path(f"traits/{section['bag_of_words']}")
    return inputs


def own_bow_args(section: dict, config: dict, inputs: dict) -> str:
    """`--own-bag-of-words TRAIT PROMPTS` per prompt-contrast trait."""
    own = zip(contrast_traits(section, config), inputs["own_bow"])
    return " ".join(f"--own-bag-of-words {t} {p}" for t, p in own)


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.prefill."""
    where = "experiments.prefill"
    require_variant(f"{where}.variant", section.get("variant"), config)
    require_prompt_set(f"{where}.harmful", section["harmful"], config)
    require_prompt_set(f"{where}.harmless", section["harmless"], config)
    require_distinct_sets(where, section["harmful"], section["harmless"])
    require_traits(f"{where}.traits", section["traits"], config)
    if section["bag_of_words"]:
        require_contrast_trait(f"{where}.bag_of_words", section["bag_of_words"], config)
    if section["prompt_set"] in config["prompt_sets"]:
        raise TraitscopeError(
            f"{where}.prompt_set {section['prompt_set']!r} is also under prompt_sets:; "
            "the experiment writes that set itself, so give it another name"
        )


def trajectories(projections: pd.DataFrame, conditions: pd.DataFrame) -> pd.DataFrame:
    """Per-token scores at the chosen layer with `step` = token index - last prompt token."""
    tokens = chosen_rows(projections)
    tokens = tokens[tokens["token_index"] >= 0].copy()
    if tokens.empty:
        raise TraitscopeError("no per-token projections: capture the prefill set with token_segments")
    tokens["step"] = tokens["token_index"] - tokens.groupby("prompt_id")["token_index"].transform("min")
    return tokens.merge(conditions[["prompt_id", "condition", "prefill_index"]], on="prompt_id")


def _matrix(traj: pd.DataFrame) -> np.ndarray:
    """[n_prompts, n_steps] scores, NaN where a prompt has fewer steps."""
    return traj.pivot(index="prompt_id", columns="step", values="score").to_numpy(dtype=float)


def surface_baselines(
    pooled: pd.DataFrame,
    conditions: pd.DataFrame,
    traits: list[str],
    bow_prompts: str | Path | None,
    n_boot: int,
    seed: int,
    own_bow: dict[str, str | Path] | None = None,
) -> dict:
    """The harmful-vs-benign comparisons beside the surface baselines of `traitscope.baselines`.

    AdvBench requests are longer than Alpaca instructions and use other words, so C1 vs C3 and
    C2 vs C4 can separate on the surface alone. Baselines: prompt length (the user text's
    characters) and, with `bow_prompts`, a bag of words fitted on that trait prompt set's
    extraction rows (a prompt-contrast trait: its own, `own_bow`, the rows its vector saw); both
    read the user text only, so they score C2 vs C4 as they score C1 vs C3. Per comparison and
    trait: the trait AUC, each baseline's, and the differences with paired bootstrap CIs. A
    scored prompt that fitted a bag of words is an error.
    """
    texts = dict(zip(conditions["prompt_id"], user_texts(conditions)))
    bow_of, bows, training = baselines.bags_of_words(bow_prompts, own_bow or {}, traits, seed)
    baselines.check_unseen(training, {"prefill conditions": list(texts.values())})
    out: dict = {
        "bag_of_words_fitted_on": None if bow_prompts is None else str(bow_prompts),
        "bag_of_words_of": bow_of,
    }
    for key in ("C1_vs_C3", "C2_vs_C4"):
        a, b, position = COMPARISONS[key]
        out[key] = {"position": position, "traits": {}}
        for trait in traits:
            rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == position)]
            ra, rb = per_request(rows, a), per_request(rows, b)
            surface = baselines.baseline_scores(
                [texts[i] for i in ra["prompt_id"]], [texts[i] for i in rb["prompt_id"]], bows
            )
            out[key]["n_harmful"], out[key]["n_benign"] = len(ra), len(rb)
            out[key]["baselines"] = baselines.baseline_aucs(surface, n_boot, seed)
            out[key]["traits"][trait] = baselines.against_baselines(
                ra["score"].to_numpy(),
                rb["score"].to_numpy(),
                baselines.trait_baselines(surface, bow_of.get(trait)),
                n_boot=n_boot,
                seed=seed,
            )
    return out


def prefill_analysis(
    projections_path: str | Path,
    conditions_path: str | Path,
    out_json: str | Path,
    grid_png: str | Path,
    trajectory_png: str | Path,
    settings: PrefillAnalysisSettings,
    bow_prompts: str | Path | None = None,
    own_bow: dict[str, str | Path] | None = None,
) -> dict:
    """All comparisons with Holm correction, the 2x2 interaction and trajectory divergence, and
    the harmful-vs-benign ones beside the surface baselines (a bag of words with `bow_prompts`,
    or a prompt-contrast trait's own, `own_bow`)."""
    traits, n_boot, seed = list(settings.traits), settings.n_boot, settings.seed
    projections = read_projections(projections_path, chosen=True)  # pooled and per-token rows
    conditions = read_table(
        conditions_path, "prefill-conditions", ("prompt_id", "condition", "prefill_index")
    )
    missing = sorted(set(traits) - set(projections["trait"]))
    if missing:
        raise TraitscopeError(f"{projections_path}: no projections for trait(s) {', '.join(missing)}")
    pooled = pooled_scores(projections, conditions)
    comparisons = compare_conditions(pooled, traits, n_boot, seed)
    by_prefill: dict[str, dict] = {}
    prefills = sorted(i for i in pooled["prefill_index"].unique() if i >= 0)
    if len(prefills) > 1:  # the key comparison once per prefill (pooled above)
        for i in prefills:
            rows = pooled[(pooled["prefill_index"] == i) & (pooled["position"] == "prefill_mean")]
            by_prefill[str(i)] = {
                trait: compare_groups(
                    rows.loc[(rows["trait"] == trait) & (rows["condition"] == "C2"), "score"].to_numpy(),
                    rows.loc[(rows["trait"] == trait) & (rows["condition"] == "C4"), "score"].to_numpy(),
                    n_boot=n_boot,
                    seed=seed,
                )
                for trait in traits
            }
    interaction = {}
    condition_means: dict[str, dict] = {}  # the 2x2 cells as the grid figure draws them
    for trait in traits:
        rows = pooled[(pooled["trait"] == trait) & (pooled["position"] == "response_mean")]
        interaction[trait] = prefill_interaction(rows)
        # a cell counts requests: several prefills' answers to one request average first
        by_request = rows.groupby(["condition", "request"], sort=False)["score"].mean()
        scores = {c: by_request.loc[c].to_numpy() for c in ("C1", "C2", "C3", "C4")}
        condition_means[trait] = {
            c: {"position": "response_mean", **mean_with_ci(x, n_boot=n_boot, seed=seed)}
            for c, x in scores.items()
        }
    # per-token steps are tokens of one prefill: with several, each is tested on its own rows
    # (a request once per test), and the figure and `first_step` show the first prefill's
    traj = trajectories(projections, conditions)
    indices = sorted(i for i in traj["prefill_index"].unique() if i >= 0)
    divergence = {}
    for trait in traits:
        t = traj[traj["trait"] == trait]
        first = {
            i: first_divergence(
                _matrix(t[(t["condition"] == "C2") & (t["prefill_index"] == i)]),
                _matrix(t[(t["condition"] == "C4") & (t["prefill_index"] == i)]),
            )
            for i in indices
        }
        divergence[trait] = {
            "first_step": first[indices[0]],
            "prefill_index": int(indices[0]),
            "step_0": "last prompt token",
            "alpha": 0.05,
            "test": "Welch t per step, Holm-corrected across steps",
        }
        if len(indices) > 1:
            divergence[trait]["by_prefill"] = {str(i): step for i, step in first.items()}
    shown = traj[traj["prefill_index"].isin([-1, indices[0]])]
    result = {
        "design": {
            k: {"a": a, "b": b, "position": p, "paired": k in PAIRED} for k, (a, b, p) in COMPARISONS.items()
        },
        "n_prompts": conditions["condition"].value_counts().to_dict(),
        "prefills": sorted(set(conditions.loc[conditions["prefill"] != "", "prefill"])),
        "comparisons": comparisons,
        "correction": "Holm across traits and comparisons",
        "C2_vs_C4_by_prefill": by_prefill,
        "interaction": interaction,
        "condition_means": condition_means,
        "trajectory_divergence": divergence,
        "baselines": surface_baselines(pooled, conditions, traits, bow_prompts, n_boot, seed, own_bow),
    }
    save_figure(grid_png, figures.prefill_grid_figure(condition_means, traits))
    trajectory = figures.trajectory_figure(shown, traits, divergence, n_boot=n_boot, seed=seed)
    save_figure(trajectory_png, trajectory)
    write_json(out_json, result)  # last: its presence means every output was written
    return result


def add_commands(add) -> None:
    """`traitscope prefill-conditions` and `traitscope prefill-analysis`."""
    p = add("prefill-conditions", _conditions_cli, "the prefill attack's 2x2 prompt set")
    p.add_argument("--harmful", required=True, help="prepared harmful prompt set")
    p.add_argument("--harmless", required=True, help="prepared benign prompt set")
    add_settings_argument(p, PrefillConditionsSettings)
    p.add_argument("--out", required=True)

    p = add("prefill-analysis", _analysis_cli, "prefill attack: 2x2 statistics and trajectories")
    p.add_argument("--projections", required=True)
    p.add_argument("--conditions", required=True, help="the conditions prompt set (Parquet)")
    p.add_argument("--out", required=True, help="condition_comparison.json")
    p.add_argument("--grid-png", required=True)
    p.add_argument("--trajectory-png", required=True)
    add_settings_argument(p, PrefillAnalysisSettings)
    p.add_argument(
        "--bag-of-words",
        type=path_or_none,
        required=True,
        help="trait prompt set whose extraction rows fit the bag-of-words baseline, or none",
    )
    add_own_bow_argument(p)


def _conditions_cli(a) -> None:
    prefill_conditions(a.harmful, a.harmless, a.settings, a.out)


def _analysis_cli(a) -> None:
    prefill_analysis(
        a.projections,
        a.conditions,
        a.out,
        a.grid_png,
        a.trajectory_png,
        a.settings,
        a.bag_of_words,
        dict(a.own_bow),
    )


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = Section(
    "Prefill attack", (f"C2 > C4 on the prefill tokens, Cohen's d > {PREFILL_D_MIN}",), order=20
)


def result_files(section: dict) -> dict[str, str]:
    """The result files the summary reads, among the enabled section's targets."""
    return among_targets(targets(section), {"comparison": "condition_comparison.json"})


def criteria(results: dict) -> list:
    """This experiment's rows of the summary table."""
    return prefill_criteria(results["comparison"])
