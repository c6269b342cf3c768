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

# (population [n, k], each candidate's run) -> per candidate {"fitness", ...}
Evaluate = Callable[[np.ndarray, list[int]], list[dict]]


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


# the run lasts `generations`: pycma's convergence stops (a flat fitness, which a weak judge or a
# small model gives easily, tiny steps) are off, and it prints nothing
NO_STOPS = {
    "verbose": -9,
    "tolflatfitness": 10**9,
    "tolfun": 0,
    "tolfunhist": 0,
    "tolx": 0,
    "tolstagnation": 10**9,
}


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
    restarts: int = 1,
) -> dict:
    """Maximise the fitness with CMA-ES for `generations` generations, resumably.

    `restarts` independent runs from `x0` go in lockstep: each generation, every run's
    population is evaluated in one call (one generation on the model for all of them), told
    which run each candidate is of (a run's candidates share their sampling noise, runs do not),
    so how much the result depends on luck is measured at little extra cost. After
    every generation the runs, numpy's global random state (pycma draws from it), the history
    and each run's best candidate are written to `state_file`; a rerun with the same `digest`
    continues from there. Returns that state, `best` the best of every run. `seed` >= 0 (pycma
    treats its own 0 as "seed from the clock", so seed + 1 is what it gets).
    """
    import cma

    state = _load_state(state_file, digest)
    if state is None:
        options = {"popsize": popsize, **NO_STOPS}
        runs = [
            cma.CMAEvolutionStrategy(np.asarray(x0, float), sigma0, {**options, "seed": seed + 1 + r})
            for r in range(restarts)
        ]
        state = {
            "digest": digest,
            "es": runs,
            "history": [],
            "bests": [None] * restarts,
            "best": None,
            "generation": 0,
            "random_state": np.random.get_state(),
        }
        resumed_from = None
    else:
        np.random.set_state(state["random_state"])
        resumed_from = state["generation"]
        print(f"traitscope cmaes: resuming after generation {resumed_from}", file=sys.stderr)
    runs = state["es"]
    while state["generation"] < generations:
        if stops := {k: str(v) for es in runs for k, v in es.stop().items()}:
            state["stopped"] = stops
            break
        populations = [np.asarray(es.ask()) for es in runs]
        results = evaluate(np.concatenate(populations), [r for r, p in enumerate(populations) for _ in p])
        fitness = [float(r["fitness"]) for r in results]
        g = state["generation"]
        for r, (es, population) in enumerate(zip(runs, populations)):
            first = r * len(population)
            own = fitness[first : first + len(population)]
            es.tell(list(population), [-f for f in own])
            i = int(np.argmax(own))
            if state["bests"][r] is None or own[i] > state["bests"][r]["fitness"]:
                state["bests"][r] = {
                    "fitness": own[i],
                    "x": population[i].copy(),
                    "generation": g,
                    "details": results[first + i],
                }
        state["best"] = max(state["bests"], key=lambda b: b["fitness"])
        entry = {
            "generation": g,
            "fitness": fitness,
            "restart": [r for r, p in enumerate(populations) for _ in p],  # each candidate's run
            "best_fitness": max(fitness),
            "mean_fitness": float(np.mean(fitness)),
            "best_so_far": state["best"]["fitness"],
            "sigma": [float(es.sigma) for es in runs],
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
