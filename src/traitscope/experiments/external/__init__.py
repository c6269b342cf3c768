"""External datasets: do trait projections detect harm in labelled prompt sets?

HarmBench behaviours vs harmless controls, the project's held-out hard negatives (harmful
and harmless requests sharing a key word), and BeaverTails prompt/response pairs per harm
category. Every trait is scored at its chosen layer, at one pooled position (the last
prompt token for bare prompts; the mean over the response for BeaverTails, whose labels
describe the response). AUCs carry stratified bootstrap CIs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traitscope.command_args import add_own_bow_argument, path_or_none
from traitscope.config import (
    require_captured,
    require_contrast_trait,
    require_distinct_sets,
    require_prompt_set,
    require_traits,
    require_variant,
)
from traitscope.data.loaders import CATEGORY_SEP, SAFE_CATEGORY
from traitscope.data.traits import contrast_pool, trait_path
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import CaptureRequest, Section, among_targets
from traitscope.experiments.external.analysis import beavertails, external_analysis, harmbench  # noqa: F401  (re-exported)
from traitscope.experiments.external.criteria import AUC_MIN, external_criteria
from traitscope.experiments.external.settings import BeaverTailsSampleSettings, ExternalSettings
from traitscope.io import read_table, write_parquet
from traitscope.paths import projections_path, prompts_path, trait_dir
from traitscope.settings import add_settings_argument

OUT_DIR = "results/external_datasets"
# labelled harmful/harmless set pairs of the section -> their short key in the rule's inputs
LABELLED = {"harmbench": "hb", "hard_negatives": "hn"}


def beavertails_sample(
    prompts: str | Path, out: str | Path, settings: BeaverTailsSampleSettings
) -> pd.DataFrame:
    """The rows BeaverTails' one capture job reads: each category's seeded sample, every row once.

    A harmful row is sampled in its first true category (in `settings.categories` order),
    and the analysis later counts it in every category it carries; `safe` holds the safe
    pairs. One job rather than one per category: on a GPU each job's start-up (imports,
    CUDA, the model load) cost more than its pairs. The response becomes the assistant
    prefill. An empty category is an error.
    """
    table = read_table(prompts, "prep-prompts")
    missing = [
        c for c in ("prompt_id", "prompt", "response", "category", "label", "n_categories") if c not in table
    ]
    if missing:
        raise TraitscopeError(
            f"{prompts}: missing column(s) {', '.join(missing)}; prepare it with dataset: beavertails"
        )
    harm = [c for c in settings.categories if c != SAFE_CATEGORY]
    unlabelled = table.loc[table["category"].isna() | table["label"].isna(), "prompt_id"]
    if len(unlabelled):  # a null category split into NaN and failed the category match
        raise TraitscopeError(
            f"{prompts}: row {unlabelled.iloc[0]!r} has no category or label; "
            "prepare it with dataset: beavertails"
        )
    keys = table["category"].str.split(CATEGORY_SEP)
    first = keys.apply(lambda ks: next((c for c in harm if c in ks), None))
    groups = []
    for category in settings.categories:
        if category == SAFE_CATEGORY:
            group = table[table["label"] == 0]
        else:
            group = table[(table["label"] == 1) & (first == category)]
        if group.empty:
            raise TraitscopeError(
                f"{prompts}: BeaverTails category {category!r} has no rows; use a larger split or file, "
                "or remove it from experiments.external.beavertails.categories"
            )
        n = settings.n_per_category
        if n is not None and len(group) > n:
            group = group.sample(n=n, random_state=settings.seed).sort_index()
        groups.append(group)
    sample = pd.concat(groups).sort_index()
    sample = sample.assign(prefill=sample["response"]).reset_index(drop=True)
    write_parquet(out, sample)
    return sample


def beavertails_set(section: dict) -> str:
    """The derived prompt set of BeaverTails' one capture job."""
    return f"{section['beavertails']['prompt_set']}.sample"


def targets(section: dict) -> list[str]:
    """The files the experiment ends in, given which datasets are configured."""
    out = ["failure_cases.json", "score_distributions.png"]
    for name in LABELLED:
        if section[name]:
            out += [f"{name}_results.json", f"{name}_auc.png"]
    if section["beavertails"]:
        out += ["beavertails_results.json", "per_category_auc.png"]
    return [f"{OUT_DIR}/{name}" for name in out]


def capture_requests(section: dict) -> list[CaptureRequest]:
    """The labelled sets the analysis projects, at their own capture settings."""
    sets = [s for name in LABELLED for s in (section[name] or {}).values()]
    if section["beavertails"]:
        sets.append(beavertails_set(section))
    return [CaptureRequest(tuple((section["variant"], s) for s in sets))]


def contrast_traits(section: dict, config: dict) -> list[str]:
    """The analysed prompt-contrast traits: each stands beside a bag of words fitted on its own rows."""
    return [t for t in section["traits"] if contrast_pool(trait_path(config["traits_dir"], t))]


def analysis_inputs(section: dict, config: dict) -> dict[str, str | list[str]]:
    """Named inputs of the analysis rule: each labelled set's with what its baselines need (both
    sides' prompts, the bags of words' training sets, each trait's training rows)."""
    variant, inputs = section["variant"], {}
    for name, key in LABELLED.items():
        if section[name]:
            pair = section[name]
            inputs[f"{key}_harmful"] = projections_path(variant, pair["harmful"])
            inputs[f"{key}_harmless"] = projections_path(variant, pair["harmless"])
            inputs[f"{key}_prompts"] = prompts_path(pair["harmful"])
            inputs[f"{key}_harmless_prompts"] = prompts_path(pair["harmless"])
    if any(section[name] for name in LABELLED):
        inputs["trait_meta"] = [
            f"{trait_dir(config['base_model'], t)}/vectors.json" for t in section["traits"]
        ]
        inputs["own_bow"] = [prompts_path(f"traits/{t}") for t in contrast_traits(section, config)]
        if section["bag_of_words"]:
            inputs["bow"] = prompts_path(f"traits/{section['bag_of_words']}")
    if section["beavertails"]:
        inputs["bt_proj"] = [projections_path(variant, beavertails_set(section))]
        inputs["bt_prompts"] = [prompts_path(beavertails_set(section))]
    return inputs


def analysis_args(section: dict, config: dict, inputs: dict) -> str:
    """CLI options naming every input of `traitscope external-analysis`."""
    args = []
    if "hb_harmful" in inputs:
        args.append(
            f"--harmbench-harmful {inputs['hb_harmful']} --harmbench-harmless {inputs['hb_harmless']} "
            f"--harmbench-prompts {inputs['hb_prompts']} "
            f"--harmbench-harmless-prompts {inputs['hb_harmless_prompts']}"
        )
    if "hn_harmful" in inputs:
        args.append(
            f"--hard-negatives {inputs['hn_harmful']} {inputs['hn_prompts']} "
            f"{inputs['hn_harmless']} {inputs['hn_harmless_prompts']}"
        )
    if "trait_meta" in inputs:
        args.append(f"--bag-of-words {inputs.get('bow', 'none')}")
        args += [f"--trait-meta {t} {m}" for t, m in zip(section["traits"], inputs["trait_meta"])]
        own = zip(contrast_traits(section, config), inputs["own_bow"])
        args += [f"--own-bag-of-words {t} {p}" for t, p in own]
    args += [
        f"--beavertails {p} {q}" for p, q in zip(inputs.get("bt_proj", []), inputs.get("bt_prompts", []))
    ]
    return " ".join(args)


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.external."""
    where = "experiments.external"
    require_variant(f"{where}.variant", section.get("variant"), config)
    require_traits(f"{where}.traits", section["traits"], config)
    if not (any(section[name] for name in LABELLED) or section["beavertails"]):
        raise TraitscopeError(
            f"{where}: set harmbench, hard_negatives, beavertails or several (or enabled: false)"
        )
    for labelled in LABELLED:
        for key, name in (section[labelled] or {}).items():
            require_prompt_set(f"{where}.{labelled}.{key}", name, config)
            require_captured(f"{where}.position_harmbench", [section["position_harmbench"]], name, config)
        if section[labelled]:
            require_distinct_sets(
                f"{where}.{labelled}", section[labelled]["harmful"], section[labelled]["harmless"]
            )
    if section["bag_of_words"]:
        require_contrast_trait(f"{where}.bag_of_words", section["bag_of_words"], config)
    bt = section["beavertails"]
    if bt:
        require_prompt_set(f"{where}.beavertails.prompt_set", bt["prompt_set"], config, dataset="beavertails")
        if SAFE_CATEGORY not in bt["categories"]:
            raise TraitscopeError(f"{where}.beavertails.categories: include 'safe', the comparison group")
        pool = [section["position_beavertails"]]
        require_captured(f"{where}.position_beavertails", pool, beavertails_set(section), config)


def add_commands(add) -> None:
    """`traitscope beavertails-sample` and `traitscope external-analysis`."""
    p = add("beavertails-sample", _sample_cli, "the BeaverTails rows to capture: each category's sample")
    p.add_argument("--prompts", required=True, help="BeaverTails prompt set (traitscope prep-prompts)")
    add_settings_argument(p, BeaverTailsSampleSettings)
    p.add_argument("--out", required=True)

    p = add("external-analysis", _analysis_cli, "HarmBench and BeaverTails harm-detection statistics")
    p.add_argument("--out-dir", required=True)
    add_settings_argument(p, ExternalSettings)
    p.add_argument("--harmbench-harmful", default=None, help="projections of HarmBench behaviours")
    p.add_argument("--harmbench-harmless", default=None, help="projections of harmless controls")
    p.add_argument("--harmbench-prompts", default=None, help="the HarmBench prompt set (for categories)")
    p.add_argument("--harmbench-harmless-prompts", default=None, help="the controls' prompt set")
    p.add_argument(
        "--hard-negatives",
        nargs=4,
        default=None,
        metavar=("HARMFUL_PROJ", "HARMFUL_PROMPTS", "HARMLESS_PROJ", "HARMLESS_PROMPTS"),
        help="the held-out hard-negative pairs' two sides (projections and prompt sets)",
    )
    p.add_argument(
        "--bag-of-words",
        type=path_or_none,
        default=None,
        help="trait prompt set whose extraction rows fit the bag-of-words baseline, or none",
    )
    p.add_argument(
        "--trait-meta",
        nargs=2,
        action="append",
        default=[],
        metavar=("TRAIT", "VECTORS_JSON"),
        help="a trait's vectors.json: its training rows must not be scored (repeat)",
    )
    add_own_bow_argument(p)
    p.add_argument(
        "--beavertails",
        nargs=2,
        action="append",
        default=[],
        metavar=("PROJECTIONS", "PROMPTS"),
        help="captured BeaverTails rows' projections and prompts (repeat for several files)",
    )


def _sample_cli(a) -> None:
    beavertails_sample(a.prompts, a.out, a.settings)


def _analysis_cli(a) -> None:
    shared = {"trait_meta": dict(a.trait_meta), "bow_prompts": a.bag_of_words, "own_bow": dict(a.own_bow)}
    harmbench_inputs = hard_negatives_inputs = None
    if a.harmbench_harmful:
        harmbench_inputs = {
            "harmful_proj": [a.harmbench_harmful],
            "harmless_proj": [a.harmbench_harmless],
            "harmful_prompts": a.harmbench_prompts,
            "harmless_prompts": a.harmbench_harmless_prompts,
            **shared,
        }
    if a.hard_negatives:
        proj, prompts, harmless_proj, harmless_prompts = a.hard_negatives
        hard_negatives_inputs = {
            "harmful_proj": [proj],
            "harmless_proj": [harmless_proj],
            "harmful_prompts": prompts,
            "harmless_prompts": harmless_prompts,
            **shared,
        }
    external_analysis(
        a.out_dir, a.settings, harmbench_inputs, [tuple(g) for g in a.beavertails], hard_negatives_inputs
    )


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = Section("External datasets", (f"ROC-AUC > {AUC_MIN}", "harm-severity correlation"), order=10)


def result_files(section: dict) -> dict[str, str]:
    """The result files the summary reads, among the enabled section's targets."""
    return among_targets(
        targets(section), {"harmbench": "harmbench_results.json", "beavertails": "beavertails_results.json"}
    )


def criteria(results: dict) -> list:
    """This experiment's rows of the summary table."""
    return external_criteria(results.get("harmbench"), results.get("beavertails"))
