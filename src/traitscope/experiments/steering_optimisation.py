"""Steering-vector optimisation: how far are extracted vectors from vectors optimised for behaviour?

Per trait, CMA-ES (pycma) searches steering directions at the trait's chosen layer inside a
PCA basis of the trait set's activations there (extraction split, both instructions, the
extraction position), starting at the mean-difference vector's coordinates in that basis.
A candidate's fitness is the mean LLM-judge trait score of the answers the model gives to a
few training questions (the trait's first extraction questions, asked with no system
prompt) while the candidate, scaled to a fixed steering norm, is added to the residual
stream. An answer counts 0 unless the judge also rates it coherent at or above
`coherence_floor` (or cannot score it), so gibberish cannot win. Generation uses fixed
seeds, so candidates are compared on the same random draws and the fitness moves only
with the vector. The CMA-ES state (and numpy's global random state, which pycma samples
from) is saved after every generation: a killed run continues from its last generation
and ends where an uninterrupted run would.

On held-out questions (the trait's first evaluation questions), no vector, the mean_diff
vector, the probe vector and the optimised vector are compared at the same norm: the
judge's trait and coherence scores with bootstrap CIs, each vector's steering delta
against no vector (paired by question), the cosines between the extracted and optimised
vectors, and which PCA components moved most (`extraction_gap.json`,
`optimization_curves.png`).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from traitscope.config import require_traits
from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path, save_figure, save_safetensors, write_json
from traitscope.judge import add_judge_arguments, judge_from_args
from traitscope.paths import capture_path, trait_dir

OUT_DIR = "results/cmaes"
CONDITIONS = ("none", "mean_diff", "probe", "optimised")


@dataclass(frozen=True)
class OptimisationSettings:
    """experiments.steering_optimisation, less the keys the DAG uses (every default in the schema)."""

    components: int
    popsize: int
    generations: int
    sigma0: float
    coefficient: float
    coherence_floor: float
    n_train: int
    n_heldout: int
    max_new_tokens: int
    temperature: float
    seed: int
    max_tokens: int
    n_boot: int

    @classmethod
    def from_dict(cls, data: dict) -> OptimisationSettings:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def search_digest(self, *parts: Any) -> str:
        """What a saved CMA-ES state must match to be resumed (generations may grow)."""
        content = {k: v for k, v in asdict(self).items() if k not in ("generations", "n_heldout", "n_boot")}
        text = json.dumps([content, *parts], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- plug-in interface


def targets(section: dict) -> list[str]:
    return [f"{OUT_DIR}/extraction_gap.json", f"{OUT_DIR}/optimization_curves.png"]


def captures(section: dict) -> list[tuple[str, str]]:
    """Nothing beyond the trait sets, which the core captures anyway."""
    return []


def check_config(section: dict, config: dict) -> None:
    where = "experiments.steering_optimisation"
    require_traits(f"{where}.traits", section["traits"], config)
    if not section["traits"]:
        raise TraitscopeError(f"{where}.traits: name at least one trait")
    if section["popsize"] < 2:
        raise TraitscopeError(f"{where}.popsize: CMA-ES needs at least 2 candidates per generation")


def optimise_outputs(trait: str) -> dict[str, str]:
    return {
        "vectors": f"{OUT_DIR}/vectors/optimized/{trait}",
        "json": f"{OUT_DIR}/{trait}/optimisation.json",
    }


def heldout_output(trait: str) -> str:
    return f"{OUT_DIR}/{trait}/heldout.json"


def state_path(trait: str) -> str:
    """The resumable CMA-ES state (not a rule output, so a failed job leaves it in place)."""
    return f"{OUT_DIR}/state/{trait}/cmaes_state.pkl"


def settings_json(section: dict) -> str:
    """Every setting but the DAG's as JSON (a rule parameter: a changed setting reruns)."""
    return json.dumps({k: v for k, v in section.items() if k not in ("enabled", "traits")}, sort_keys=True)


def rule_inputs(group: str, trait: str, variant: str, traits_dir: str) -> dict[str, str]:
    """The optimisation and held-out rules' inputs for one trait (Snakemake input names)."""
    name = f"{group}/{trait}"
    paths = trait_inputs(variant, name)
    return {
        "model": f"results/models/{variant}/manifest.json",
        **{k: paths[k] for k in ("vectors", "evaluation", "capture", "prompts")},
        "trait": f"{traits_dir}/{name}.yaml",
    }


def report_inputs(section: dict, variant: str) -> dict[str, list[str]]:
    return {
        "optimisations": [optimise_outputs(t)["json"] for t in section["traits"]],
        "heldouts": [heldout_output(t) for t in section["traits"]],
        "agreements": [trait_inputs(variant, t)["agreement"] for t in section["traits"]],
    }


def trait_inputs(variant: str, trait: str) -> dict[str, str]:
    folder = trait_dir(variant, trait)
    return {
        "vectors": f"{folder}/vectors.safetensors",
        "evaluation": f"{folder}/evaluation.json",
        "capture": capture_path(variant, f"traits/{trait}"),
        "prompts": f"results/prompts/traits/{trait}.parquet",
        "agreement": f"{folder}/judge_agreement.json",
    }


# --------------------------------------------------------------------------- pieces


def pca_basis(
    capture_json: str | Path, prompts: str | Path, position: str, layer: int, components: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top principal directions (rows, unit, orthogonal) of the extraction split's activations
    at `layer`, their explained-variance ratios and the number of activations."""
    import torch

    from traitscope.vectors.extraction import labelled_activations

    table, x, layers = labelled_activations(capture_json, prompts, position)
    if layer not in layers:
        raise TraitscopeError(f"{capture_json}: layer {layer} was not captured; recapture the trait set")
    rows = (table["split"] == "extraction").to_numpy()
    acts = x[torch.tensor(rows)][:, layers.index(layer)].double().numpy()
    if len(acts) < 3:
        raise TraitscopeError(f"{prompts}: too few extraction activations for a PCA basis")
    centred = acts - acts.mean(0)
    _, singular, vh = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(acts) - 1)
    ratio = singular**2 / (singular**2).sum()
    return vh[:k], ratio[:k], len(acts)


def unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if n == 0:
        raise TraitscopeError("a steering direction of zero length")
    return v / n


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(unit(np.asarray(a, float)) @ unit(np.asarray(b, float)))


def steered_answers(
    model: Any,
    tokenizer: Any,
    questions: list[str],
    vector: np.ndarray | None,
    layer: int,
    s: OptimisationSettings,
) -> list[str]:
    """Answers to `questions` (no system prompt) with `vector` added at `layer`; fixed seeds."""
    import contextlib

    import torch

    from traitscope.model import chat
    from traitscope.model.generate import generate
    from traitscope.model.hooks import add_to_layer

    prompts = [chat.encode(tokenizer, chat.messages_for(q)).ids for q in questions]
    steer = (
        add_to_layer(model, layer, torch.tensor(vector, dtype=torch.float32))
        if vector is not None
        else contextlib.nullcontext()
    )
    with steer:
        out = generate(
            model, tokenizer, prompts, s.max_new_tokens, s.max_tokens, s.temperature, s.seed, progress=False
        )
    return [tokenizer.decode(ids, skip_special_tokens=True) for ids in out]


def gated_scores(trait: list[float | None], coherence: list[float | None], floor: float) -> list[float]:
    """Per answer: the trait score if the judge scored it and rated it coherent >= floor, else 0."""
    return [t if (t is not None and c is not None and c >= floor) else 0.0 for t, c in zip(trait, coherence)]


def judge_answers(
    judge: Any, rubric: str, questions: list[str], answers: list[list[str]]
) -> tuple[list, list]:
    """Trait and coherence scores, one list per answer set (all sets judged in two calls)."""
    from traitscope.judge import Item

    flat = [(q, a) for set_ in answers for q, a in zip(questions, set_)]
    trait = [j.score for j in judge.score([Item(rubric, q, a) for q, a in flat])]
    coherence = [j.score for j in judge.score([Item(judge.settings.coherence, q, a) for q, a in flat])]
    n = len(questions)
    return (
        [trait[i * n : (i + 1) * n] for i in range(len(answers))],
        [coherence[i * n : (i + 1) * n] for i in range(len(answers))],
    )


def _mean(values: list[float | None]) -> float | None:
    ok = [v for v in values if v is not None]
    return float(np.mean(ok)) if ok else None


# --------------------------------------------------------------------------- CMA-ES, resumable

Evaluate = Callable[[np.ndarray], list[dict]]  # population [n, k] -> per candidate {"fitness", ...}


def _save_state(path: str | Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(pickle.dumps(state))


def _load_state(path: str | Path, digest: str) -> dict | None:
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = pickle.loads(path.read_bytes())
    except Exception as exc:  # a corrupt or foreign file: start over, say why
        print(f"traitscope cmaes: ignoring unreadable state {path} ({type(exc).__name__})", file=sys.stderr)
        return None
    if state.get("digest") != digest:
        print(f"traitscope cmaes: {path} is from other settings or inputs; starting over", file=sys.stderr)
        return None
    return state


def run_cmaes(
    evaluate: Evaluate,
    x0: np.ndarray,
    sigma0: float,
    popsize: int,
    generations: int,
    seed: int,
    state_file: str | Path,
    digest: str,
    on_generation: Callable[[dict], None] | None = None,
) -> dict:
    """Maximise the fitness with CMA-ES for `generations` generations, resumably.

    After every generation the ES, numpy's global random state (pycma draws from it), the
    history and the best candidate so far are written to `state_file`; a rerun with the same
    `digest` continues from there. Returns that state. `seed` >= 0 (pycma treats its own 0 as
    "seed from the clock", so seed + 1 is what it gets).
    """
    import cma

    state = _load_state(state_file, digest)
    if state is None:
        # the run lasts `generations`: pycma's convergence stops (a flat fitness, which a weak
        # judge or a small model gives easily, tiny steps) are off
        options = {
            "popsize": popsize,
            "seed": seed + 1,
            "verbose": -9,
            "tolflatfitness": 10**9,
            "tolfun": 0,
            "tolfunhist": 0,
            "tolx": 0,
            "tolstagnation": 10**9,
        }
        es = cma.CMAEvolutionStrategy(np.asarray(x0, float), sigma0, options)
        state = {
            "digest": digest,
            "es": es,
            "history": [],
            "best": None,
            "generation": 0,
            "random_state": np.random.get_state(),
        }
        resumed_from = None
    else:
        np.random.set_state(state["random_state"])
        resumed_from = state["generation"]
        print(f"traitscope cmaes: resuming after generation {resumed_from}", file=sys.stderr)
    es = state["es"]
    while state["generation"] < generations:
        if es.stop():
            state["stopped"] = {k: str(v) for k, v in es.stop().items()}
            break
        population = np.asarray(es.ask())
        results = evaluate(population)
        fitness = [float(r["fitness"]) for r in results]
        es.tell(list(population), [-f for f in fitness])
        g = state["generation"]
        i = int(np.argmax(fitness))
        if state["best"] is None or fitness[i] > state["best"]["fitness"]:
            state["best"] = {
                "fitness": fitness[i],
                "x": population[i].copy(),
                "generation": g,
                "details": results[i],
            }
        entry = {
            "generation": g,
            "fitness": fitness,
            "best_fitness": max(fitness),
            "mean_fitness": float(np.mean(fitness)),
            "best_so_far": state["best"]["fitness"],
            "sigma": float(es.sigma),
            **{k: [r.get(k) for r in results] for k in ("trait_mean", "coherence_mean")},
            "judge": results[0].get("judge_generation"),
        }
        state["history"].append(entry)
        state["generation"] = g + 1
        state["random_state"] = np.random.get_state()
        _save_state(state_file, state)
        if on_generation is not None:
            on_generation(entry)
    state["resumed_from"] = resumed_from
    return state


# --------------------------------------------------------------------------- stages


def _load_trait_vector(vectors: str | Path, evaluation: str | Path, name: str) -> Any:
    from traitscope.vectors.record import TraitVector

    return TraitVector.load(vectors, evaluation, name)


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

    from traitscope.data.traits import load_trait
    from traitscope.model import loading
    from traitscope.model.generate import generation_session

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

    def evaluate(population: np.ndarray) -> list[dict]:
        before = judge.stats.as_dict()
        answers = [
            steered_answers(model, tokenizer, questions, vector_of(x), layer, settings) for x in population
        ]
        trait_scores, coherence = judge_answers(judge, trait.judge_rubric, questions, answers)
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
        _file_digest(vectors), layer, trait.sha256, questions, judge.describe(), str(model_manifest)
    )
    # every candidate generates for the same questions: one KV cache and captured graph serve them all
    with generation_session(model):
        start_eval = evaluate(x0[None])[0]
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


def gain_vs_mean_diff(scores: dict, n_boot: int, seed: int) -> dict:
    """The plan's criterion: the optimised vector's held-out steering delta relative to the
    mean_diff vector's, (delta_opt - delta_md) / |delta_md| (deltas against no vector), with a
    paired bootstrap CI over the questions all three arms were scored on."""
    from traitscope.stats import relative_gain_paired

    arms = (scores[name]["trait"] for name in ("optimised", "mean_diff", "none"))
    rows = [row for row in zip(*arms) if None not in row]
    if len(rows) < 2:
        reason = f"{len(rows)} held-out question(s) scored with no vector, mean_diff and optimised; need 2"
        return {"gain": None, "ci_low": None, "ci_high": None, "n": len(rows), "reason": reason}
    optimised, mean_diff, none = (list(arm) for arm in zip(*rows))
    return relative_gain_paired(optimised, mean_diff, none, n_boot=n_boot, seed=seed)


def cmaes_heldout(
    model_manifest: str | Path,
    vectors: str | Path,
    evaluation: str | Path,
    optimised: str | Path,
    trait_file: str | Path,
    judge: Any,
    settings: OptimisationSettings,
    out_json: str | Path,
) -> dict:
    """No vector, mean_diff, probe and optimised on held-out questions, at one steering norm."""
    from traitscope.data.traits import load_trait
    from traitscope.model import loading
    from traitscope.model.generate import generation_session

    trait = load_trait(trait_file)
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
    with generation_session(model):  # the three steered conditions replay one graph
        answers = [
            steered_answers(model, tokenizer, questions, directions[n], layer, settings) for n in names
        ]
    trait_scores, coherence = judge_answers(judge, trait.judge_rubric, questions, answers)
    per = {}
    for name, ans, t, c in zip(names, answers, trait_scores, coherence):
        gated = gated_scores(t, c, settings.coherence_floor)
        per[name] = {"trait": t, "coherence": c, "gated": gated, "answers": ans}
    result = {
        "trait": trait.name,
        "layer": layer,
        "steering_norm": norm,
        "questions": questions,
        "n_questions": len(questions),
        "conditions": {
            n: _condition_stats(p["trait"], p["coherence"], p["gated"], settings.n_boot, settings.seed)
            for n, p in per.items()
        },
        "steering_delta": {
            n: {
                "trait": _delta(per[n]["trait"], per["none"]["trait"], settings.n_boot, settings.seed),
                "coherence": _delta(
                    per[n]["coherence"], per["none"]["coherence"], settings.n_boot, settings.seed
                ),
            }
            for n in names
            if n != "none"
        },
        "delta_test": "paired by question: mean difference, Cohen's d_z with a bootstrap CI over "
        "questions, paired t and Wilcoxon; only questions both arms were scored on",
        "scores": {n: {k: p[k] for k in ("trait", "coherence")} for n, p in per.items()},
        "examples": [
            {"question": q, **{n: per[n]["answers"][i] for n in names}} for i, q in enumerate(questions[:4])
        ],
        "judge": judge.describe(),
        "judge_calls": judge.stats.as_dict(),
    }
    write_json(out_json, result)
    return result


def cmaes_report(
    traits: list[str],
    optimisations: list[str | Path],
    heldouts: list[str | Path],
    agreements: list[str | Path],
    out_json: str | Path,
    out_png: str | Path,
) -> dict:
    """extraction_gap.json (every number, per trait) and optimization_curves.png."""
    from traitscope import plotting

    per = {}
    for name, o, h, a in zip(traits, optimisations, heldouts, agreements):
        opt, held, agree = (json.loads(Path(p).read_text()) for p in (o, h, a))
        per[name] = {
            "layer": opt["layer"],
            "steering_norm": opt["steering_norm"],
            "judge_agreement": {
                k: agree.get(k)
                for k in (
                    "auc",
                    "ci_low",
                    "ci_high",
                    "n_pos",
                    "n_neg",
                    "mean_score_positive",
                    "mean_score_negative",
                    "reason",
                )
            },
            "training": {
                "start_fitness": opt["start"]["fitness"],
                "best_fitness": opt["best"]["fitness"],
                "best_generation": opt["best"]["generation"],
                "gain": opt["best"]["fitness"] - opt["start"]["fitness"],
                "questions": len(opt["training_questions"]),
            },
            "heldout": {
                "conditions": held["conditions"],
                "steering_delta": held["steering_delta"],
                "gain_vs_mean_diff": gain_vs_mean_diff(
                    held["scores"], opt["settings"]["n_boot"], opt["settings"]["seed"]
                ),
                "n_questions": held["n_questions"],
                "delta_test": held["delta_test"],
            },
            "cosines": opt["cosines"],
            "basis": opt["basis"],
            "components_moved": opt["components_moved"],
            "judge_calls": {"optimise": opt["judge_calls"], "heldout": held["judge_calls"]},
            "history": [
                {
                    k: e[k]
                    for k in ("generation", "best_fitness", "mean_fitness", "best_so_far", "sigma", "judge")
                }
                for e in opt["history"]
            ],
        }
    first = json.loads(Path(optimisations[0]).read_text())
    result = {
        "question": "how far are extracted vectors from vectors optimised for judged behaviour?",
        "fitness": "mean judge trait score over training answers; an answer counts 0 unless judged "
        f"coherent >= {first['settings']['coherence_floor']}",
        "settings": first["settings"],
        "judge": first["judge"],
        "traits": per,
    }
    write_json(out_json, result)
    save_figure(
        out_png,
        plotting.optimisation_curves_figure(
            {t: p["history"] for t, p in per.items()},
            {t: p["training"]["start_fitness"] for t, p in per.items()},
        ),
    )
    return result


# --------------------------------------------------------------------------- CLI


def add_commands(add) -> None:
    """`traitscope cmaes-optimise`, `cmaes-heldout` and `cmaes-report`."""
    for name, func, text in (
        ("cmaes-optimise", _optimise_cli, "steering optimisation: CMA-ES on judged behaviour (resumable)"),
        (
            "cmaes-heldout",
            _heldout_cli,
            "steering optimisation: extracted vs optimised on held-out questions",
        ),
    ):
        p = add(name, func, text)
        p.add_argument("--model", required=True, help="the steered variant's manifest.json")
        p.add_argument("--vectors", required=True)
        p.add_argument("--evaluation", required=True)
        p.add_argument("--trait-file", required=True)
        add_judge_arguments(p)
        p.add_argument("--settings", required=True, help="the experiment's settings as JSON")
        p.add_argument("--out", required=True, help="JSON result")
        if name == "cmaes-optimise":
            p.add_argument("--capture", required=True, help="the trait set's capture.json (PCA basis)")
            p.add_argument("--prompts", required=True, help="the trait prompt set")
            p.add_argument("--out-dir", required=True, help="folder of the optimised layer<L>.safetensors")
            p.add_argument("--state", required=True, help="the resumable CMA-ES state file")
        else:
            p.add_argument("--optimised", required=True, help="the optimised vector's folder")

    p = add("cmaes-report", _report_cli, "steering optimisation: extraction_gap.json and curves")
    p.add_argument("--traits", nargs="+", required=True)
    p.add_argument("--optimisations", nargs="+", required=True)
    p.add_argument("--heldouts", nargs="+", required=True)
    p.add_argument("--agreements", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--png", required=True)


def _optimise_cli(a) -> None:
    judge = judge_from_args(a)
    try:
        cmaes_optimise(
            a.model,
            a.vectors,
            a.evaluation,
            a.capture,
            a.prompts,
            a.trait_file,
            judge,
            OptimisationSettings.from_dict(json.loads(a.settings)),
            a.out_dir,
            a.out,
            a.state,
        )
    finally:
        judge.close()


def _heldout_cli(a) -> None:
    judge = judge_from_args(a)
    try:
        cmaes_heldout(
            a.model,
            a.vectors,
            a.evaluation,
            a.optimised,
            a.trait_file,
            judge,
            OptimisationSettings.from_dict(json.loads(a.settings)),
            a.out,
        )
    finally:
        judge.close()


def _report_cli(a) -> None:
    cmaes_report(a.traits, a.optimisations, a.heldouts, a.agreements, a.out, a.png)
