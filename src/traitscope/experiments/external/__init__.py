"""External datasets: do trait projections detect harm in labelled prompt sets?

HarmBench behaviours vs harmless controls, and BeaverTails prompt/response pairs per harm
category. Every trait is scored at its chosen layer, at one pooled position (the last
prompt token for bare prompts; the mean over the response for BeaverTails, whose labels
describe the response). AUCs carry stratified bootstrap CIs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from traitscope import baselines, plotting
from traitscope.command_args import int_or_none, path_or_none
from traitscope.config import require_contrast_trait, require_prompt_set, require_traits, require_variant
from traitscope.data.loaders import CATEGORY_SEP, SAFE_CATEGORY
from traitscope.data.prompts import read_prompt_set, text_key, user_texts
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import Section, among_targets
from traitscope.experiments.external.criteria import AUC_MIN, external_criteria
from traitscope.experiments.external.figures import category_auc_figure
from traitscope.io import save_figure, write_json, write_parquet
from traitscope.paths import projections_path, prompts_path, trait_dir
from traitscope.stats import auc, auc_with_ci, compare_groups, spearman, youden_threshold

OUT_DIR = "results/external_datasets"


def beavertails_category(
    prompts: str | Path,
    category: str,
    categories: list[str],
    out: str | Path,
    n_per_category: int | None,
    seed: int,
) -> pd.DataFrame:
    """One capture job's rows: pairs whose first true category (in `categories` order) is this one.

    Each row is captured once, in its first category's job; the analysis later counts it
    in every category it carries. `safe` holds the safe pairs. The response becomes the
    assistant prefill. Sampling is seeded and per job; an empty group is an error.
    """
    table = pd.read_parquet(prompts)
    missing = [
        c for c in ("prompt_id", "prompt", "response", "category", "label", "n_categories") if c not in table
    ]
    if missing:
        raise TraitscopeError(
            f"{prompts}: missing column(s) {', '.join(missing)}; prepare it with dataset: beavertails"
        )
    harm = [c for c in categories if c != SAFE_CATEGORY]
    keys = table["category"].str.split(CATEGORY_SEP)
    first = keys.apply(lambda ks: next((c for c in harm if c in ks), None))
    if category == SAFE_CATEGORY:
        group = table[table["label"] == 0]
    else:
        group = table[(table["label"] == 1) & (first == category)]
    if group.empty:
        raise TraitscopeError(
            f"{prompts}: BeaverTails category {category!r} has no rows; use a larger split or file, "
            "or remove it from experiments.external.beavertails.categories"
        )
    if n_per_category is not None and len(group) > n_per_category:
        group = group.sample(n=n_per_category, random_state=seed).sort_index()
    group = group.assign(prefill=group["response"])
    write_parquet(out, group.reset_index(drop=True))
    return group


def beavertails_sets(section: dict) -> dict[str, str]:
    """{category: derived prompt set}: one capture job each, known before anything runs."""
    bt = section["beavertails"]
    return {c: f"{bt['prompt_set']}.{c.replace(',', '-')}" for c in bt["categories"]}


def targets(section: dict) -> list[str]:
    """The files the experiment ends in, given which datasets are configured."""
    out = ["failure_cases.json", "score_distributions.png"]
    if section["harmbench"]:
        out += ["harmbench_results.json", "harmbench_auc.png"]
    if section["beavertails"]:
        out += ["beavertails_results.json", "per_category_auc.png"]
    return [f"{OUT_DIR}/{name}" for name in out]


def captures(section: dict) -> list[tuple[str, str]]:
    """(variant, prompt set) pairs the analysis projects."""
    sets = list((section["harmbench"] or {}).values())
    if section["beavertails"]:
        sets += list(beavertails_sets(section).values())
    return [(section["variant"], s) for s in sets]


def analysis_inputs(section: dict, config: dict) -> dict[str, str | list[str]]:
    """Named inputs of the analysis rule: HarmBench's with what its baselines need (both sides'
    prompts, the bag of words' training set, each trait's training rows)."""
    variant, inputs = section["variant"], {}
    if section["harmbench"]:
        hb = section["harmbench"]
        inputs["hb_harmful"] = projections_path(variant, hb["harmful"])
        inputs["hb_harmless"] = projections_path(variant, hb["harmless"])
        inputs["hb_prompts"] = prompts_path(hb["harmful"])
        inputs["hb_harmless_prompts"] = prompts_path(hb["harmless"])
        inputs["trait_meta"] = [
            f"{trait_dir(config['base_model'], t)}/vectors.json" for t in section["traits"]
        ]
        if section["bag_of_words"]:
            inputs["bow"] = prompts_path(f"traits/{section['bag_of_words']}")
    if section["beavertails"]:
        sets = list(beavertails_sets(section).values())
        inputs["bt_proj"] = [projections_path(variant, s) for s in sets]
        inputs["bt_prompts"] = [prompts_path(s) for s in sets]
    return inputs


def analysis_args(section: dict, inputs: dict) -> str:
    """CLI options naming every input of `traitscope external-analysis`."""
    args = []
    if "hb_harmful" in inputs:
        args.append(
            f"--harmbench-harmful {inputs['hb_harmful']} --harmbench-harmless {inputs['hb_harmless']} "
            f"--harmbench-prompts {inputs['hb_prompts']} "
            f"--harmbench-harmless-prompts {inputs['hb_harmless_prompts']} "
            f"--bag-of-words {inputs.get('bow', 'none')}"
        )
        args += [f"--trait-meta {t} {m}" for t, m in zip(section["traits"], inputs["trait_meta"])]
    args += [
        f"--beavertails {p} {q}" for p, q in zip(inputs.get("bt_proj", []), inputs.get("bt_prompts", []))
    ]
    return " ".join(args)


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.external."""
    where = "experiments.external"
    require_variant(f"{where}.variant", section.get("variant"), config)
    require_traits(f"{where}.traits", section["traits"], config)
    if not (section["harmbench"] or section["beavertails"]):
        raise TraitscopeError(f"{where}: set harmbench, beavertails or both (or enabled: false)")
    for key, name in (section["harmbench"] or {}).items():
        require_prompt_set(f"{where}.harmbench.{key}", name, config)
    if section["bag_of_words"]:
        require_contrast_trait(f"{where}.bag_of_words", section["bag_of_words"], config)
    bt = section["beavertails"]
    if bt:
        require_prompt_set(f"{where}.beavertails.prompt_set", bt["prompt_set"], config, dataset="beavertails")
        if SAFE_CATEGORY not in bt["categories"]:
            raise TraitscopeError(f"{where}.beavertails.categories: include 'safe', the comparison group")


def _read(paths: list[str | Path]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def chosen_scores(projections: pd.DataFrame, position: str, traits: list[str]) -> pd.DataFrame:
    """`traitscope.vectors.projection.chosen_scores`, imported when called: the module loads torch,
    and this one is imported while Snakemake parses the workflow."""
    from traitscope.vectors.projection import chosen_scores as scores

    return scores(projections, position, traits)


def failure_cases(scores: pd.Series, labels: np.ndarray, prompts: pd.Series, limit: int = 20) -> dict:
    """Harmful prompts scored below the Youden-J threshold (false negatives), lowest first."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    cut = youden_threshold(pos.to_numpy(), neg.to_numpy())
    missed = pos[pos < cut["threshold"]].sort_values()
    return {
        **cut,
        "n_false_negatives": int(len(missed)),
        "examples": [
            {"prompt_id": pid, "score": float(s), "prompt": str(prompts[pid])}
            for pid, s in missed.head(limit).items()
        ],
    }


def harmbench(
    harmful_proj: list[str | Path],
    harmless_proj: list[str | Path],
    harmful_prompts: str | Path,
    harmless_prompts: str | Path,
    traits: list[str],
    position: str,
    trait_meta: dict[str, str | Path],
    bow_prompts: str | Path | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict, dict]:
    """AUC of harmful behaviours vs harmless controls, overall and per semantic category, beside
    the surface baselines (prompt length; a bag of words fitted on `bow_prompts`' extraction rows).

    `trait_meta` maps each trait to its vectors.json: a scored prompt that built a vector (or
    fitted the bag of words) is an error.
    """
    bad = chosen_scores(_read(harmful_proj), position, traits)
    good = chosen_scores(_read(harmless_proj), position, traits)
    prompts = pd.read_parquet(harmful_prompts).set_index("prompt_id")
    controls = read_prompt_set(harmless_prompts).set_index("prompt_id")
    bad_texts = user_texts(prompts.loc[bad.index].reset_index())
    good_texts = user_texts(controls.loc[good.index].reset_index())
    training = {t: baselines.training_keys(m) for t, m in trait_meta.items()}
    bow = None
    if bow_prompts is not None:
        fit_texts, fit_labels = baselines.fitting_rows(bow_prompts)
        training[f"the bag of words ({bow_prompts})"] = {text_key(t) for t in fit_texts}
        bow = baselines.bag_of_words(fit_texts, fit_labels, seed)
    baselines.check_unseen(training, {"harmbench harmful": bad_texts, "harmbench harmless": good_texts})
    surface = baselines.baseline_scores(bad_texts, good_texts, bow)
    result: dict = {
        "position": position,
        "n_harmful": len(bad),
        "n_harmless": len(good),
        "baselines": baselines.baseline_aucs(surface, n_boot, seed),
        "traits": {},
    }
    failures: dict = {}
    texts = pd.concat([prompts["prompt"], pd.Series(index=good.index, data="")])
    for trait in traits:
        versus = baselines.against_baselines(
            bad[trait].to_numpy(), good[trait].to_numpy(), surface, n_boot=n_boot, seed=seed
        )
        overall = versus.pop("auc")
        per_category = {}
        for category, ids in prompts.groupby("category").groups.items():
            scores = bad.loc[bad.index.intersection(ids), trait].to_numpy()
            if len(scores) >= 2:
                per_category[str(category)] = auc_with_ci(
                    scores, good[trait].to_numpy(), n_boot=n_boot, seed=seed
                )
        result["traits"][trait] = {
            "auc": overall,
            "by_category": per_category,
            "mean_harmful": float(bad[trait].mean()),
            "mean_harmless": float(good[trait].mean()),
            **versus,
        }
        both = pd.concat([bad[trait], good[trait]])
        labels = np.r_[np.ones(len(bad)), np.zeros(len(good))]
        failures[trait] = failure_cases(both, labels, texts)
    dists = {t: {"harmful": bad[t].to_numpy(), "harmless": good[t].to_numpy()} for t in traits}
    return result, failures, dists


def beavertails(
    groups: list[tuple[str | Path, str | Path]],
    traits: list[str],
    position: str,
    n_boot: int,
    seed: int,
) -> tuple[dict, dict, dict]:
    """Per category: mean scores, category vs safe (d, CI, p, AUC); overall harm AUC; severity.

    `groups` are (projections, prompts) of the capture jobs; every row counts in each
    category it carries. Returns (results, failure cases, score distributions).
    """
    table = chosen_scores(_read([p for p, _ in groups]), position, traits)
    rows = (
        pd.concat([pd.read_parquet(q) for _, q in groups]).drop_duplicates("prompt_id").set_index("prompt_id")
    )
    rows = rows.loc[table.index]
    carried = rows["category"].str.split(CATEGORY_SEP)
    scores = {SAFE_CATEGORY: table[rows["label"] == 0]}
    for category in sorted(set().union(*carried[rows["label"] == 1])):
        scores[category] = table[(rows["label"] == 1) & carried.apply(lambda ks, c=category: c in ks)]
    safe = scores[SAFE_CATEGORY]
    if len(safe) < 2:
        raise TraitscopeError(
            "BeaverTails analysis needs at least 2 safe pairs; add 'safe' to the categories"
        )
    result: dict = {"position": position, "categories": {}, "overall": {}, "severity": {}, "best_trait": {}}
    for group, members in scores.items():
        if group == SAFE_CATEGORY:
            continue
        entry = {"n": len(members)}
        for trait in traits:
            x, y = members[trait].to_numpy(), safe[trait].to_numpy()
            entry[trait] = {"mean": float(x.mean())}
            try:
                entry[trait]["vs_safe"] = compare_groups(x, y, n_boot=n_boot, seed=seed)
                entry[trait]["auc"] = auc_with_ci(x, y, n_boot=n_boot, seed=seed)
            except ValueError as exc:  # a category too small for a CI: say so rather than fail the run
                entry[trait]["skipped"] = f"n={len(x)} vs safe n={len(y)}: {exc}"
                entry[trait]["auc_point"] = auc(x, y) if len(x) and np.isfinite(x).all() else None
        result["categories"][group] = entry
        scored = [t for t in traits if "auc" in entry[t]]
        result["best_trait"][group] = max(scored, key=lambda t: entry[t]["auc"]["auc"]) if scored else None
    unsafe = table[rows["label"] == 1]
    severity, texts = rows["n_categories"], rows["prompt"]
    failures = {}
    for trait in traits:
        result["overall"][trait] = auc_with_ci(
            unsafe[trait].to_numpy(), safe[trait].to_numpy(), n_boot=n_boot, seed=seed
        )
        both = pd.concat([unsafe[trait], safe[trait]])
        result["severity"][trait] = spearman(both.to_numpy(), severity.loc[both.index].to_numpy())
        labels = np.r_[np.ones(len(unsafe)), np.zeros(len(safe))]
        failures[trait] = failure_cases(both, labels, texts)
    result["n_unsafe"], result["n_safe"] = len(unsafe), len(safe)
    dists = {t: {"harmful": unsafe[t].to_numpy(), "harmless": safe[t].to_numpy()} for t in traits}
    return result, failures, dists


def external_analysis(
    out_dir: str | Path,
    traits: list[str],
    position_harmbench: str,
    position_beavertails: str,
    harmbench_inputs: dict | None,
    beavertails_groups: list[tuple[str, str]],
    n_boot: int,
    seed: int,
) -> None:
    """Write every external-dataset result and figure under `out_dir`."""
    out_dir = Path(out_dir)
    failures: dict = {}
    dists: dict = {}
    if harmbench_inputs:
        result, failures["harmbench"], dists["harmbench"] = harmbench(
            **harmbench_inputs, traits=traits, position=position_harmbench, n_boot=n_boot, seed=seed
        )
        write_json(out_dir / "harmbench_results.json", result)
        save_figure(
            out_dir / "harmbench_auc.png",
            plotting.auc_figure(
                {t: r["auc"] for t, r in result["traits"].items()},
                "HarmBench behaviours vs harmless controls",
            ),
        )
    if beavertails_groups:
        result, failures["beavertails"], dists["beavertails"] = beavertails(
            beavertails_groups, traits=traits, position=position_beavertails, n_boot=n_boot, seed=seed
        )
        write_json(out_dir / "beavertails_results.json", result)
        save_figure(out_dir / "per_category_auc.png", category_auc_figure(result, traits))
    write_json(out_dir / "failure_cases.json", failures)
    save_figure(
        out_dir / "score_distributions.png", plotting.score_distribution_figure(dists, failures, traits)
    )


def add_commands(add) -> None:
    """`traitscope beavertails-category` and `traitscope external-analysis`."""
    p = add("beavertails-category", _category_cli, "one BeaverTails capture job's rows (first true category)")
    p.add_argument("--prompts", required=True, help="BeaverTails prompt set (traitscope prep-prompts)")
    p.add_argument("--category", required=True, help="a harm category key, or safe")
    p.add_argument("--categories", nargs="+", required=True, help="every category, in order")
    p.add_argument("--n", type=int_or_none, required=True, help="seeded sample per job, or none")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True)

    p = add("external-analysis", _analysis_cli, "HarmBench and BeaverTails harm-detection statistics")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--traits", nargs="+", required=True)
    p.add_argument("--harmbench-harmful", default=None, help="projections of HarmBench behaviours")
    p.add_argument("--harmbench-harmless", default=None, help="projections of harmless controls")
    p.add_argument("--harmbench-prompts", default=None, help="the HarmBench prompt set (for categories)")
    p.add_argument("--harmbench-harmless-prompts", default=None, help="the controls' prompt set")
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
    p.add_argument(
        "--beavertails",
        nargs=2,
        action="append",
        default=[],
        metavar=("PROJECTIONS", "PROMPTS"),
        help="one BeaverTails capture job's projections and prompts (repeat)",
    )
    p.add_argument("--position-harmbench", required=True)
    p.add_argument("--position-beavertails", required=True)
    p.add_argument("--n-boot", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)


def _category_cli(a) -> None:
    beavertails_category(a.prompts, a.category, a.categories, a.out, a.n, a.seed)


def _analysis_cli(a) -> None:
    harmbench_inputs = None
    if a.harmbench_harmful:
        harmbench_inputs = {
            "harmful_proj": [a.harmbench_harmful],
            "harmless_proj": [a.harmbench_harmless],
            "harmful_prompts": a.harmbench_prompts,
            "harmless_prompts": a.harmbench_harmless_prompts,
            "trait_meta": dict(a.trait_meta),
            "bow_prompts": a.bag_of_words,
        }
    external_analysis(
        a.out_dir,
        a.traits,
        a.position_harmbench,
        a.position_beavertails,
        harmbench_inputs,
        [tuple(g) for g in a.beavertails],
        a.n_boot,
        a.seed,
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
