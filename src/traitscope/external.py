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

from traitscope.errors import TraitscopeError
from traitscope.io import save_figure, write_json
from traitscope.loaders import BEAVERTAILS_CATEGORIES, CATEGORY_SEP, SAFE_CATEGORY
from traitscope.stats import auc_with_ci, compare_groups, spearman, youden_threshold


def category_slug(category: str) -> str:
    """File- and wildcard-safe name of a BeaverTails category (the keys contain commas)."""
    return category.replace(",", "-")


def split_beavertails(
    prompts: str | Path, out_dir: str | Path, n_per_category: int | None, seed: int = 0
) -> list[str]:
    """One prompt set per harm category plus `safe`; the response becomes the assistant prefill.

    An unsafe pair with several categories belongs to each of them. Sampling is seeded and
    per category; `n_per_category: null` keeps every row. An empty group is an error.
    """
    table = pd.read_parquet(prompts)
    missing = [
        c for c in ("prompt_id", "prompt", "response", "category", "label", "n_categories") if c not in table
    ]
    if missing:
        raise TraitscopeError(
            f"{prompts}: missing column(s) {', '.join(missing)}; prepare it with dataset: beavertails"
        )
    out_dir = Path(out_dir)
    groups = {SAFE_CATEGORY: table[table["label"] == 0]}
    keys = table["category"].str.split(CATEGORY_SEP)
    for category in BEAVERTAILS_CATEGORIES:
        groups[category] = table[(table["label"] == 1) & keys.apply(lambda ks, c=category: c in ks)]
    empty = [c for c, g in groups.items() if g.empty]
    if empty:
        raise TraitscopeError(
            f"{prompts}: empty BeaverTails group(s) {', '.join(empty)}; use a larger split or file"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for category, group in groups.items():
        if n_per_category is not None and len(group) > n_per_category:
            group = group.sample(n=n_per_category, random_state=seed).sort_index()
        group = group.assign(prefill=group["response"], group=category)
        group.to_parquet(out_dir / f"{category_slug(category)}.parquet", index=False)
    return [category_slug(c) for c in groups]


def _scores(projections: pd.DataFrame, position: str, traits: list[str]) -> pd.DataFrame:
    """prompt_id x trait table of scores at each trait's chosen layer and one pooled position."""
    rows = projections[projections["chosen_layer"] & (projections["position"] == position)]
    if rows.empty:
        raise TraitscopeError(
            f"no projections at position {position!r} on a chosen layer; check the position"
        )
    missing = sorted(set(traits) - set(rows["trait"]))
    if missing:
        raise TraitscopeError(
            f"no projections for trait(s) {', '.join(missing)}; add them to traits: and rerun"
        )
    return rows.pivot_table(index="prompt_id", columns="trait", values="score")


def _read(paths: list[str | Path]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


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
    traits: list[str],
    position: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict, dict]:
    """AUC of harmful behaviours vs harmless controls, overall and per semantic category."""
    bad = _scores(_read(harmful_proj), position, traits)
    good = _scores(_read(harmless_proj), position, traits)
    prompts = pd.read_parquet(harmful_prompts).set_index("prompt_id")
    result: dict = {"position": position, "n_harmful": len(bad), "n_harmless": len(good), "traits": {}}
    failures: dict = {}
    texts = pd.concat([prompts["prompt"], pd.Series(index=good.index, data="")])
    for trait in traits:
        overall = auc_with_ci(bad[trait].to_numpy(), good[trait].to_numpy(), n_boot=n_boot, seed=seed)
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
        }
        both = pd.concat([bad[trait], good[trait]])
        labels = np.r_[np.ones(len(bad)), np.zeros(len(good))]
        failures[trait] = failure_cases(both, labels, texts)
    dists = {t: {"harmful": bad[t].to_numpy(), "harmless": good[t].to_numpy()} for t in traits}
    return result, failures, dists


def beavertails(
    proj_by_group: dict[str, list[str | Path]],
    prompts_by_group: dict[str, str | Path],
    traits: list[str],
    position: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[dict, dict, dict]:
    """Per category: mean scores, category vs safe (d, CI, p, AUC); overall harm AUC; severity.

    Returns (results, failure cases, score distributions) keyed by trait.
    """
    scores = {g: _scores(_read(p), position, traits) for g, p in proj_by_group.items()}
    prompts = {g: pd.read_parquet(p).set_index("prompt_id") for g, p in prompts_by_group.items()}
    safe = scores.get(SAFE_CATEGORY)
    if safe is None:
        raise TraitscopeError("BeaverTails analysis needs the 'safe' group")
    result: dict = {"position": position, "categories": {}, "overall": {}, "severity": {}, "best_trait": {}}
    for group, table in scores.items():
        if group == SAFE_CATEGORY:
            continue
        entry = {"n": len(table)}
        for trait in traits:
            x, y = table[trait].to_numpy(), safe[trait].to_numpy()
            entry[trait] = {"mean": float(x.mean())}
            try:
                entry[trait]["vs_safe"] = compare_groups(x, y, n_boot=n_boot, seed=seed)
                entry[trait]["auc"] = auc_with_ci(x, y, n_boot=n_boot, seed=seed)
            except ValueError as exc:  # a category too small for a CI: say so rather than fail the run
                entry[trait]["skipped"] = f"n={len(x)} vs safe n={len(y)}: {exc}"
        result["categories"][group] = entry
        scored = [t for t in traits if "auc" in entry[t]]
        result["best_trait"][group] = max(scored, key=lambda t: entry[t]["auc"]["auc"]) if scored else None
    unsafe_ids = sorted(set().union(*(t.index for g, t in scores.items() if g != SAFE_CATEGORY)))
    unsafe = pd.concat([t for g, t in scores.items() if g != SAFE_CATEGORY])
    unsafe = unsafe[~unsafe.index.duplicated()].loc[unsafe_ids]
    severity = pd.concat([p["n_categories"] for p in prompts.values()])
    severity = severity[~severity.index.duplicated()]
    texts = pd.concat([p["prompt"] for p in prompts.values()])
    texts = texts[~texts.index.duplicated()]
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


def run(
    out_dir: str | Path,
    traits: list[str],
    position_harmbench: str,
    position_beavertails: str,
    harmbench_inputs: dict | None,
    beavertails_inputs: dict | None,
    n_boot: int = 2000,
    seed: int = 0,
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
            _auc_figure(
                {t: r["auc"] for t, r in result["traits"].items()},
                "HarmBench behaviours vs harmless controls",
            ),
        )
    if beavertails_inputs:
        result, failures["beavertails"], dists["beavertails"] = beavertails(
            **beavertails_inputs, traits=traits, position=position_beavertails, n_boot=n_boot, seed=seed
        )
        write_json(out_dir / "beavertails_results.json", result)
        save_figure(out_dir / "per_category_auc.png", _category_figure(result, traits))
    write_json(out_dir / "failure_cases.json", failures)
    save_figure(out_dir / "score_distributions.png", _distribution_figure(dists, failures, traits))


def _auc_figure(aucs: dict, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(aucs)
    values = [aucs[n]["auc"] for n in names]
    err = [
        [v - aucs[n]["ci_low"] for n, v in zip(names, values)],
        [aucs[n]["ci_high"] - v for n, v in zip(names, values)],
    ]
    ax.barh(names, values, xerr=err, capsize=4, color="tab:red", alpha=0.7)
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC (harmful vs harmless), 95% bootstrap CI")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _category_figure(result: dict, traits: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(traits), figsize=(4.5 * len(traits), 5), squeeze=False, sharey=False)
    for ax, trait in zip(axes[0], traits):
        scored = [c for c in result["categories"] if "auc" in result["categories"][c][trait]]
        cats = sorted(scored, key=lambda c: result["categories"][c][trait]["auc"]["auc"])
        aucs = [result["categories"][c][trait]["auc"] for c in cats]
        values = [a["auc"] for a in aucs]
        err = [
            [v - a["ci_low"] for v, a in zip(values, aucs)],
            [a["ci_high"] - v for v, a in zip(values, aucs)],
        ]
        ax.barh([c.replace(",", ", ") for c in cats], values, xerr=err, capsize=3, alpha=0.75)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("ROC-AUC vs safe pairs (95% CI)")
        ax.set_title(trait)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("BeaverTails: does each trait separate a harm category from safe responses?")
    fig.tight_layout()
    return fig


def _distribution_figure(dists: dict, failures: dict, traits: list[str]):
    """Score histograms of harmful vs harmless per dataset and trait, with the Youden threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(dists), len(traits), figsize=(4 * len(traits), 3 * len(dists)), squeeze=False
    )
    for row, name in enumerate(dists):
        for ax, trait in zip(axes[row], traits):
            ax.hist(dists[name][trait]["harmful"], bins=20, alpha=0.6, color="tab:red", label="harmful")
            ax.hist(dists[name][trait]["harmless"], bins=20, alpha=0.6, color="tab:blue", label="harmless")
            cut = failures[name][trait]
            ax.axvline(
                cut["threshold"], color="k", ls="--", lw=1, label=f"Youden threshold (J={cut['j']:.2f})"
            )
            ax.set_title(f"{name}: {trait}")
            ax.set_xlabel("projection (activation units)")
            ax.set_ylabel("prompts")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
