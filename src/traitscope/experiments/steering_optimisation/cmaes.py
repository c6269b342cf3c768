"""Resumable CMA-ES: the search loop and its saved state.

Apart from what the fitness is (the optimisation stage's `evaluate`), so the resume logic
(a killed run ends where an uninterrupted one would) can be read and tested on its own.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from traitscope.io import atomic_path

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
