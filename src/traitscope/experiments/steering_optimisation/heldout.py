"""The cmaes-heldout stage: no vector, mean_diff, probe and optimised on held-out questions.

Every vector is steered at one norm; heldout.json holds the judge's trait and coherence
scores with bootstrap CIs and each vector's steering delta against no vector.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.data.traits import load_trait
from traitscope.errors import TraitscopeError
from traitscope.experiments.steering_optimisation.settings import OptimisationSettings
from traitscope.experiments.steering_optimisation.steering import (
    _load_trait_vector,
    _mean,
    gated_scores,
    judge_answers,
    steered_answers,
    unit,
)
from traitscope.io import write_json
from traitscope.judge.stages import truth_agreement_record
from traitscope.judge.truth_set import truth_table
from traitscope.model import loading


def read_optimised(folder: str | Path) -> tuple[np.ndarray, dict]:
    """(vector, metadata) of an optimised vector folder (one layer<L>.safetensors)."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("layer*.safetensors"))
    if len(files) != 1:
        raise TraitscopeError(f"{folder}: expected one layer<L>.safetensors; rerun cmaes-optimise")
    with safe_open(str(files[0]), framework="pt") as f:
        return f.get_tensor("vector").double().numpy(), json.loads(f.metadata()["meta"])


def _condition_stats(trait: list, coherence: list, gated: list, n_boot: int, seed: int) -> dict:
    from traitscope.stats import mean_with_ci

    def summary(values: list) -> dict:
        ok = [v for v in values if v is not None]
        try:
            return {**mean_with_ci(ok, n_boot=n_boot, seed=seed), "n_no_score": len(values) - len(ok)}
        except ValueError as exc:
            return {"mean": _mean(ok), "n": len(ok), "n_no_score": len(values) - len(ok), "reason": str(exc)}

    return {"trait": summary(trait), "coherence": summary(coherence), "gated_fitness": summary(gated)}


def _delta(vec: list, none: list, n_boot: int, seed: int) -> dict:
    """Steering delta against no vector, paired by question (questions both arms scored)."""
    from traitscope.stats import compare_paired

    pairs = [(a, b) for a, b in zip(vec, none) if a is not None and b is not None]
    diff = float(np.mean([a - b for a, b in pairs])) if pairs else None
    try:
        return compare_paired([a for a, _ in pairs], [b for _, b in pairs], n_boot=n_boot, seed=seed)
    except ValueError as exc:
        return {"n_pairs": len(pairs), "mean_diff": diff, "reason": str(exc)}


@dataclass(frozen=True)
class Scorers:
    """Who scores the held-out answers: the fitness judge, and an independent scorer with the
    trait's truth-set file (its agreement on it is measured) where the config sets one."""

    fitness: Any
    heldout: Any = None
    truth_file: str | Path | None = None


def cmaes_heldout(
    model_manifest: str | Path,
    vectors: str | Path,
    evaluation: str | Path,
    optimised: str | Path,
    trait_file: str | Path,
    scorers: Scorers,
    settings: OptimisationSettings,
    out_json: str | Path,
) -> dict:
    """No vector, mean_diff, probe and optimised on held-out questions, at one steering norm.

    With an independent scorer (`scorers.heldout`), the conditions and deltas are its own and
    the fitness judge's deltas stand beside them: a vector that games the fitness scorer scores
    high there and not here. Its agreement on the trait's truth set (`scorers.truth_file`) is
    what the judge gate of the gain criterion reads.
    """
    trait = load_trait(trait_file)
    if scorers.truth_file is not None:  # checked before the generation, not after it
        truth_table(scorers.truth_file, trait_file)
    tv = _load_trait_vector(vectors, evaluation, trait.name)
    opt_vector, meta = read_optimised(optimised)
    layer = int(meta["layer"])
    norm = float(meta["norm"])
    directions: dict[str, np.ndarray | None] = {"none": None}
    for method in ("mean_diff", "probe"):
        if method in tv.vectors:
            directions[method] = unit(tv.vectors[method][tv.row(layer)].double().numpy()) * norm
    directions["optimised"] = unit(opt_vector) * norm
    questions = list(trait.evaluation_questions[: settings.n_heldout])
    model, tokenizer = loading.load(model_manifest)
    names = list(directions)
    answers = steered_answers(model, tokenizer, questions, [directions[n] for n in names], layer, settings)
    judge, scorer = scorers.fitness, scorers.heldout or scorers.fitness
    result = {
        "trait": trait.name,
        "layer": layer,
        "steering_norm": norm,
        "questions": questions,
        "n_questions": len(questions),
        "scorer": "independent" if scorers.heldout is not None else "fitness judge",
        **_scored(scorer, trait.judge_rubric, questions, answers, names, settings),
        "delta_test": "paired by question: mean difference, Cohen's d_z with a bootstrap CI over "
        "questions, paired t and Wilcoxon; only questions both arms were scored on",
        "examples": [
            {"question": q, **{n: answers[k][i] for k, n in enumerate(names)}}
            for i, q in enumerate(questions[:4])
        ],
        "judge_truth_agreement": None,
    }
    if scorers.heldout is not None:
        result["fitness_judge"] = _scored(judge, trait.judge_rubric, questions, answers, names, settings)
    if scorers.truth_file is not None:
        result["judge_truth_agreement"] = truth_agreement_record(
            scorers.truth_file, trait_file, scorer, settings.n_boot, settings.seed
        )
    write_json(out_json, result)
    return result


def _scored(
    judge: Any, rubric: str, questions: list, answers: list, names: list, settings: OptimisationSettings
) -> dict:
    """One scorer's trait and coherence scores of every condition, their stats and the steering
    deltas against no vector."""
    trait_scores, coherence = judge_answers(judge, rubric, questions, answers)
    per = {}
    for name, t, c in zip(names, trait_scores, coherence):
        per[name] = {"trait": t, "coherence": c, "gated": gated_scores(t, c, settings.coherence_floor)}
    n_boot, seed = settings.n_boot, settings.seed
    return {
        "conditions": {
            n: _condition_stats(p["trait"], p["coherence"], p["gated"], n_boot, seed) for n, p in per.items()
        },
        "steering_delta": {
            n: {
                "trait": _delta(per[n]["trait"], per["none"]["trait"], n_boot, seed),
                "coherence": _delta(per[n]["coherence"], per["none"]["coherence"], n_boot, seed),
            }
            for n in names
            if n != "none"
        },
        "scores": {n: {k: p[k] for k in ("trait", "coherence")} for n, p in per.items()},
        "judge": judge.describe(),
        "judge_calls": judge.stats.as_dict(),
    }
