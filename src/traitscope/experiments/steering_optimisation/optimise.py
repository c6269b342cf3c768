"""The cmaes-optimise stage: CMA-ES over a PCA basis at the trait's layer, fitness from the judge.

Writes the best vector (layer<L>.safetensors) and optimisation.json with the run's history,
the cosines to the extracted vectors and the PCA components that moved most.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.data.traits import load_trait
from traitscope.experiments.steering_optimisation.cmaes import run_cmaes
from traitscope.experiments.steering_optimisation.settings import OptimisationSettings
from traitscope.experiments.steering_optimisation.steering import (
    _load_trait_vector,
    _mean,
    cosine,
    gated_scores,
    judge_answers,
    pca_basis,
    steered_answers,
    unit,
)
from traitscope.io import save_safetensors, write_json
from traitscope.model import loading
from traitscope.stats import mean_with_t_ci

# how candidates' answers are sampled, part of what a saved state must match: a state saved when
# each candidate generated alone (multinomial sampling) is not resumed under the population's
# one generation with noise keyed by question and run
SAMPLING = "population in one generation; Gumbel noise keyed by question and run"


def _restart_cosines(vectors: list[np.ndarray], mean_diff: np.ndarray) -> dict:
    """Each run's best vector's cosine with mean_diff, their mean and its t interval over runs
    (none from one run): how much the optimised direction depends on the optimiser's luck."""
    values = [cosine(v, mean_diff) for v in vectors]
    if len(values) < 2:
        return {"values": values, "mean": values[0], "ci_low": None, "ci_high": None, "n": 1}
    return {"values": values, **mean_with_t_ci(values)}


def _file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def cmaes_optimise(
    model_manifest: str | Path,
    vectors: str | Path,
    evaluation: str | Path,
    capture_json: str | Path,
    prompts: str | Path,
    trait_file: str | Path,
    judge: Any,
    settings: OptimisationSettings,
    out_dir: str | Path,
    out_json: str | Path,
    state_file: str | Path,
) -> dict:
    """CMA-ES over a PCA basis at the trait's layer; the best vector and the run's history."""
    import torch

    from traitscope.generation.generate import generation_session

    trait = load_trait(trait_file)
    tv = _load_trait_vector(vectors, evaluation, trait.name)
    layer = tv.layer
    mean_diff = tv.vectors["mean_diff"][tv.row(layer)].double().numpy()
    norm = settings.coefficient * float(np.linalg.norm(mean_diff))
    basis, ratio, n_acts = pca_basis(
        capture_json, prompts, tv.provenance["position"], layer, settings.components
    )
    start = basis @ unit(mean_diff)  # coordinates of the extracted direction (its projection)
    x0 = start / np.linalg.norm(start)
    questions = list(trait.extraction_questions[: settings.n_train])
    model, tokenizer = loading.load(model_manifest)

    def vector_of(x: np.ndarray) -> np.ndarray:
        return unit(np.asarray(x, float) @ basis) * norm

    def evaluate(population: np.ndarray, runs: list[int]) -> list[dict]:
        """Each optimiser run its own noise stream: restarts replicate the whole search."""
        before = judge.stats.as_dict()
        vectors = [vector_of(x) for x in population]
        answers = steered_answers(model, tokenizer, questions, vectors, layer, settings, runs)
        gate = settings.coherence_floor is not None
        trait_scores, coherence = judge_answers(judge, trait.judge_rubric, questions, answers, coherence=gate)
        after = judge.stats.as_dict()
        calls = {k: after[k] - before[k] for k in ("judgements", "computed", "cache_hits", "requests")}
        out = []
        for ans, t, c in zip(answers, trait_scores, coherence):
            gated = gated_scores(t, c, settings.coherence_floor)
            out.append(
                {
                    "fitness": float(np.mean(gated)),
                    "trait_mean": _mean(t),
                    "coherence_mean": _mean(c),
                    "trait": t,
                    "coherence": c,
                    "answers": ans,
                    "judge_generation": calls,
                }
            )
        return out

    digest = settings.search_digest(
        _file_digest(vectors), layer, trait.sha256, questions, judge.describe(), str(model_manifest), SAMPLING
    )
    # every generation's population generates for the same prompts: one KV cache and captured
    # graph serve them all
    with generation_session(model):
        start_eval = evaluate(x0[None], [0])[0]
        state = run_cmaes(
            evaluate,
            x0,
            settings.sigma0,
            settings.popsize,
            settings.generations,
            settings.seed,
            state_file,
            digest,
            on_generation=lambda e: print(
                f"traitscope cmaes: generation {e['generation']}: best {e['best_fitness']:.2f}, "
                f"mean {e['mean_fitness']:.2f}, judge {e['judge']}",
                file=sys.stderr,
            ),
            restarts=settings.restarts,
        )
    best = state["best"]
    best_x = np.asarray(best["x"], float)
    vector = vector_of(best_x)
    meta = {
        "trait": trait.name,
        "layer": layer,
        "norm": norm,
        "coefficient": settings.coefficient,
        "fitness": best["fitness"],
        "generation": best["generation"],
        "basis": f"top {len(basis)} principal directions of {n_acts} extraction activations",
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {"vector": vector, "coordinates": best_x, "basis": basis}
    save_safetensors(
        out_dir / f"layer{layer}.safetensors",
        {k: torch.tensor(v, dtype=torch.float32) for k, v in tensors.items()},
        {"meta": json.dumps(meta)},
    )
    moved = unit(best_x) - x0
    order = np.argsort(-np.abs(moved))
    result = {
        "trait": trait.name,
        "layer": layer,
        "method_chosen_by_evaluation": tv.method,
        "steering_norm": norm,
        "coefficient": settings.coefficient,
        "settings": asdict(settings),
        "training_questions": questions,
        "basis": {
            "components": len(basis),
            "n_activations": n_acts,
            "position": tv.provenance["position"],
            "explained_variance_ratio": ratio.tolist(),
            "mean_diff_in_basis": float(np.linalg.norm(start)),
            "note": "mean_diff_in_basis: cosine between the mean_diff vector and its projection onto "
            "the basis (1 = fully inside); CMA-ES starts at that projection",
        },
        "start": {k: start_eval[k] for k in ("fitness", "trait_mean", "coherence_mean", "answers")},
        "best": {
            "fitness": best["fitness"],
            "generation": best["generation"],
            **{k: best["details"][k] for k in ("trait_mean", "coherence_mean", "answers")},
            "coordinates": best_x.tolist(),
        },
        "history": state["history"],
        "stopped_early": state.get("stopped"),
        "resumed_from_generation": state["resumed_from"],
        "cosines": {
            "optimised_vs_mean_diff": cosine(vector, mean_diff),
            "restarts_vs_mean_diff": _restart_cosines(
                [vector_of(np.asarray(b["x"], float)) for b in state["bests"]], mean_diff
            ),
            "optimised_vs_start": cosine(vector, x0 @ basis),
            **(
                {"optimised_vs_probe": cosine(vector, tv.vectors["probe"][tv.row(layer)].double().numpy())}
                if "probe" in tv.vectors
                else {}
            ),
        },
        "components_moved": [
            {
                "component": int(i),
                "explained_variance_ratio": float(ratio[i]),
                "start": float(x0[i]),
                "optimised": float(unit(best_x)[i]),
                "change": float(moved[i]),
            }
            for i in order
        ],
        "vector_file": str(out_dir / f"layer{layer}.safetensors"),
        "judge": judge.describe(),
        "judge_calls": judge.stats.as_dict(),
    }
    write_json(out_json, result)
    return result
