"""The external datasets' analysis: each trait's scores on HarmBench and on BeaverTails per harm
category, against harmless or safe rows, with bootstrap CIs, failure cases and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from traitscope import baselines, plotting
from traitscope.data.loaders import CATEGORY_SEP, SAFE_CATEGORY
from traitscope.data.prompts import read_prompt_set, require_side, user_texts
from traitscope.errors import TraitscopeError
from traitscope.experiments.external.figures import category_auc_figure
from traitscope.experiments.external.settings import ExternalSettings
from traitscope.io import save_figure, write_json
from traitscope.stats import (
    auc,
    auc_of_codes,
    auc_with_ci,
    column_codes,
    compare_groups,
    cross_fitted_auc,
    spearman,
    youden_threshold,
)
from traitscope.vectors.projection_table import chosen_scores, read_projections


def _read(paths: list[str | Path]) -> pd.DataFrame:
    """The pooled rows at the traits' chosen layers, the only ones scored, of every file."""
    return pd.concat([read_projections(p, chosen=True, pooled=True) for p in paths], ignore_index=True)


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


def scores_at(projections: pd.DataFrame, position_of: dict[str, str]) -> pd.DataFrame:
    """prompt_id x trait scores, each trait at its own pooled position."""
    by_position: dict[str, list[str]] = {}
    for trait, position in position_of.items():
        by_position.setdefault(position, []).append(trait)
    parts = [chosen_scores(projections, p, traits)[traits] for p, traits in by_position.items()]
    return pd.concat(parts, axis=1)[list(position_of)]


def _categories(table: pd.DataFrame) -> np.ndarray:
    """A prompt set's `category` column (None where it has none), for per-category AUCs."""
    if "category" not in table.columns:
        return np.full(len(table), None, dtype=object)
    return table["category"].to_numpy(dtype=object)


def cross_fitted_best(bad: pd.DataFrame, good: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """The best trait's AUC out of sample: the trait with the highest AUC on one half of the
    prompts (the summary's rule, the first of the traits on a tie), scored on the other half,
    both ways and averaged, with a bootstrap CI that chooses again in every resample.

    The best of several traits, chosen on the prompts it is scored on, flatters itself. Each
    side's prompts, in prompt-id order, go alternately to the two halves (paired sets keep a
    pair in one half); a resample draws each half's harmful and harmless prompts with
    replacement (stratified, as `auc_with_ci`).
    """
    traits, bad, good = list(bad.columns), bad.sort_index(), good.sort_index()
    if min(len(bad), len(good)) < 4:
        return {"auc": None, "reason": "fewer than 4 prompts on a side: no 2 per half"}
    scores = np.vstack([bad.to_numpy(float), good.to_numpy(float)])
    positive = np.r_[np.ones(len(bad), bool), np.zeros(len(good), bool)]
    codes, k = column_codes(scores)

    def best(rows: np.ndarray) -> int:
        on = positive[rows]
        return int(np.argmax(auc_of_codes(codes[rows][on], codes[rows][~on], k, axis=0)))

    sides = (np.flatnonzero(positive), np.flatnonzero(~positive))
    halves = [[list(side[start::2, None]) for side in sides] for start in (0, 1)]
    found = cross_fitted_auc(scores, positive, halves, best, n_boot, seed)
    folds = [
        {"chosen_on_half": i + 1, "trait": traits[c], "auc_other_half": a}
        for i, (c, a) in enumerate(zip(found.pop("choices"), found.pop("aucs")))
    ]
    return {**found, "n_harmful": len(bad), "n_harmless": len(good), "folds": folds}


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
    own_bow: dict[str, str | Path] | None = None,
    name: str = "harmbench",
) -> tuple[dict, dict, dict]:
    """AUC of a labelled harmful set (HarmBench behaviours, the held-out hard negatives) vs its
    harmless controls, overall and per category, beside the surface baselines: prompt length and
    a bag of words fitted on the rows each trait saw (a prompt-contrast trait's own extraction
    rows, `own_bow`; else `bow_prompts`' extraction rows); and the best trait's AUC out of
    sample (`cross_fitted_best`).

    Persona traits are scored at `position`; a prompt-contrast trait (in `own_bow`) at the pool
    its vectors were built at. Per category, controls of the same category are the comparison
    where the controls carry categories (paired sets), else all controls. `trait_meta` maps each
    trait to its vectors.json: a scored prompt that built a vector (or fitted a bag of words) is
    an error.
    """
    own_bow = own_bow or {}
    position_of = {t: baselines.vectors_position(trait_meta[t]) if t in own_bow else position for t in traits}
    bad = scores_at(_read(harmful_proj), position_of)
    good = scores_at(_read(harmless_proj), position_of)
    prompts, controls = read_prompt_set(harmful_prompts), read_prompt_set(harmless_prompts)
    require_side(harmful_prompts, prompts, harmful=True)
    require_side(harmless_prompts, controls, harmful=False)
    prompts, controls = prompts.set_index("prompt_id"), controls.set_index("prompt_id")
    bad_rows, good_rows = prompts.loc[bad.index].reset_index(), controls.loc[good.index].reset_index()
    bad_texts, good_texts = user_texts(bad_rows), user_texts(good_rows)
    bow_of, bows, bow_training = baselines.bags_of_words(bow_prompts, own_bow, traits, seed)
    training = {t: baselines.training_keys(m) for t, m in trait_meta.items()} | bow_training
    baselines.check_unseen(training, {f"{name} harmful": bad_texts, f"{name} harmless": good_texts})
    surface = baselines.baseline_scores(bad_texts, good_texts, bows)
    categories = baselines.by_category(
        bad, good, (_categories(bad_rows), _categories(good_rows)), surface, n_boot, seed
    )
    result: dict = {
        "position": position,
        "position_of": position_of,
        "n_harmful": len(bad),
        "n_harmless": len(good),
        "baselines": baselines.baseline_aucs(surface, n_boot, seed),
        "bag_of_words_of": bow_of,
        "by_category": {c: {k: v for k, v in e.items() if k != "traits"} for c, e in categories.items()},
        "traits": {},
    }
    failures: dict = {}
    texts = pd.concat([prompts["prompt"], pd.Series(index=good.index, data="")])
    for trait in traits:
        versus = baselines.against_baselines(
            bad[trait].to_numpy(),
            good[trait].to_numpy(),
            baselines.trait_baselines(surface, bow_of.get(trait)),
            n_boot=n_boot,
            seed=seed,
        )
        overall = versus.pop("auc")
        result["traits"][trait] = {
            "auc": overall,
            "by_category": {c: e["traits"][trait] for c, e in categories.items()},
            "mean_harmful": float(bad[trait].mean()),
            "mean_harmless": float(good[trait].mean()),
            **versus,
        }
        both = pd.concat([bad[trait], good[trait]])
        labels = np.r_[np.ones(len(bad)), np.zeros(len(good))]
        failures[trait] = failure_cases(both, labels, texts)
    result["cross_fitted_best"] = cross_fitted_best(bad, good, n_boot, seed)
    dists = {t: {"harmful": bad[t].to_numpy(), "harmless": good[t].to_numpy()} for t in traits}
    return result, failures, dists


SEVERITY_ROWS = (
    "unsafe pairs only: Spearman rho of the score against the number of harm categories a pair "
    "carries; safe pairs (0 categories) would turn the unsafe-vs-safe separation, which the AUC "
    "measures, into a correlation"
)


def severity_gradient(unsafe: pd.Series, severity: pd.Series) -> dict:
    """Spearman rho (CI, p) of unsafe pairs' scores against their number of harm categories: does
    the score follow how harmful a pair is, among harmful pairs (`SEVERITY_ROWS`)? No rho, with the
    reason, where the unsafe pairs are too few or all carry as many categories."""
    try:
        return spearman(unsafe.to_numpy(), severity.loc[unsafe.index].to_numpy())
    except ValueError as exc:
        return {"rho": None, "n": len(unsafe), "reason": f"unsafe pairs: {exc}"}


def beavertails(
    groups: list[tuple[str | Path, str | Path]],
    traits: list[str],
    position: str,
    n_boot: int,
    seed: int,
) -> tuple[dict, dict, dict]:
    """Per category: mean scores, category vs safe (d, CI, p, AUC); overall harm AUC; harm severity
    among the unsafe pairs (`severity_gradient`).

    `groups` are (projections, prompts) of captured rows; every row counts in each
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
    result: dict = {
        "position": position,
        "categories": {},
        "overall": {},
        "severity": {},
        "severity_rows": SEVERITY_ROWS,
        "best_trait": {},
    }
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
        result["severity"][trait] = severity_gradient(unsafe[trait], severity)
        both = pd.concat([unsafe[trait], safe[trait]])
        labels = np.r_[np.ones(len(unsafe)), np.zeros(len(safe))]
        failures[trait] = failure_cases(both, labels, texts)
    result["n_unsafe"], result["n_safe"] = len(unsafe), len(safe)
    result["cross_fitted_best"] = cross_fitted_best(unsafe[traits], safe[traits], n_boot, seed)
    dists = {t: {"harmful": unsafe[t].to_numpy(), "harmless": safe[t].to_numpy()} for t in traits}
    return result, failures, dists


def external_analysis(
    out_dir: str | Path,
    settings: ExternalSettings,
    harmbench_inputs: dict | None,
    beavertails_groups: list[tuple[str, str]],
    hard_negatives_inputs: dict | None = None,
) -> None:
    """Write every external-dataset result and figure under `out_dir`.

    `harmbench_inputs` and `hard_negatives_inputs` are `harmbench`'s keyword arguments for each
    labelled set (HarmBench vs Alpaca controls; the held-out hard-negative pairs)."""
    traits, n_boot, seed = list(settings.traits), settings.n_boot, settings.seed
    position_harmbench, position_beavertails = settings.position_harmbench, settings.position_beavertails
    out_dir = Path(out_dir)
    failures: dict = {}
    dists: dict = {}
    results: dict = {}  # every result is computed before any is written: a failure leaves none behind
    labelled = (
        ("harmbench", harmbench_inputs, "HarmBench behaviours vs harmless controls"),
        ("hard_negatives", hard_negatives_inputs, "Hard negatives: harmful vs harmless, same key word"),
    )
    for name, inputs, _ in labelled:
        if inputs:
            results[name], failures[name], dists[name] = harmbench(
                **inputs, traits=traits, position=position_harmbench, n_boot=n_boot, seed=seed, name=name
            )
    if beavertails_groups:
        results["beavertails"], failures["beavertails"], dists["beavertails"] = beavertails(
            beavertails_groups, traits=traits, position=position_beavertails, n_boot=n_boot, seed=seed
        )
    for name, _, title in labelled:
        if name in results:
            save_figure(
                out_dir / f"{name}_auc.png",
                plotting.auc_figure({t: r["auc"] for t, r in results[name]["traits"].items()}, title),
            )
    if "beavertails" in results:
        save_figure(out_dir / "per_category_auc.png", category_auc_figure(results["beavertails"], traits))
    save_figure(
        out_dir / "score_distributions.png", plotting.score_distribution_figure(dists, failures, traits)
    )
    # the JSONs last: their presence means every output was written
    write_json(out_dir / "failure_cases.json", failures)
    for name, result in results.items():
        write_json(out_dir / f"{name}_results.json", result)
