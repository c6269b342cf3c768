"""The cmaes-report stage: extraction_gap.json (every trait's numbers) and optimization_curves.png.

Also the plan's criterion, the optimised vector's held-out gain over the mean_diff vector,
which the summary reads too.
"""

from __future__ import annotations

from pathlib import Path

from traitscope.errors import TraitscopeError, require_trait
from traitscope.io import read_json, save_figure, write_json


def gain_vs_mean_diff(scores: dict, n_boot: int, seed: int) -> dict:
    """The plan's criterion: the optimised vector's held-out steering delta relative to the
    mean_diff vector's, (delta_opt - delta_md) / |delta_md| (deltas against no vector), with a
    paired bootstrap CI over the questions all three arms were scored on, and the margin
    (delta_opt - delta_md) - 0.2 x |delta_md| that decides it (its CI exists where the ratio's
    does not)."""
    from traitscope.experiments.steering_optimisation.criteria import CMAES_GAIN_MIN
    from traitscope.stats import relative_gain_paired

    arms = (scores[name]["trait"] for name in ("optimised", "mean_diff", "none"))
    rows = [row for row in zip(*arms) if None not in row]
    if len(rows) < 2:
        reason = f"{len(rows)} held-out question(s) scored with no vector, mean_diff and optimised; need 2"
        return {"gain": None, "ci_low": None, "ci_high": None, "n": len(rows), "reason": reason}
    optimised, mean_diff, none = (list(arm) for arm in zip(*rows))
    return relative_gain_paired(optimised, mean_diff, none, n_boot=n_boot, seed=seed, min_gain=CMAES_GAIN_MIN)


def cmaes_report(
    traits: list[str],
    optimisations: list[str | Path],
    heldouts: list[str | Path],
    agreements: list[str | Path],
    out_json: str | Path,
    out_png: str | Path,
    truth_agreements: dict[str, str | Path] | None = None,
) -> dict:
    """extraction_gap.json (every number, per trait) and optimization_curves.png; the judge's
    agreement on the run's held-out answers per trait, and on the truth set where it has one."""
    from traitscope.experiments.steering_optimisation.figures import optimisation_curves_figure

    truth_agreements = truth_agreements or {}
    for flag, files in (
        ("--optimisations", optimisations),
        ("--heldouts", heldouts),
        ("--agreements", agreements),
    ):
        if len(files) != len(traits):  # zip would drop a trait without a word
            raise TraitscopeError(
                f"{flag}: {len(files)} file(s) for {len(traits)} trait(s); one per trait, in --traits' order"
            )
    unknown = sorted(set(truth_agreements) - set(traits))
    if unknown:
        raise TraitscopeError(f"--truth-agreements: {unknown[0]} is not in --traits {' '.join(traits)}")
    per, per_opt = {}, []
    for name, o, h, a in zip(traits, optimisations, heldouts, agreements):
        opt = _of_trait(read_json(o, "cmaes-optimise", ("layer", "best", "settings", "judge")), o, name)
        per_opt.append(opt)
        held = _of_trait(read_json(h, "cmaes-heldout", ("conditions",)), h, name)
        agree = read_json(a, "trait-agreement", ("auc",))
        truth = truth_agreements.get(name)
        per[name] = {
            "layer": opt["layer"],
            "steering_norm": opt["steering_norm"],
            "judge_agreement": _agreement(agree),
            "judge_truth_agreement": _agreement(read_json(truth, "trait-truth-agreement", ("auc",)))
            if truth
            else None,
            "training": {
                "start_fitness": opt["start"]["fitness"],
                "best_fitness": opt["best"]["fitness"],
                "best_generation": opt["best"]["generation"],
                "gain": opt["best"]["fitness"] - opt["start"]["fitness"],
                "questions": len(opt["training_questions"]),
            },
            "heldout": _heldout(held, opt["settings"]),
            "cosines": {**opt["cosines"], "noise_null": _cosine_null(opt)},
            "basis": opt["basis"],
            "components_moved": opt["components_moved"],
            "judge_calls": {
                "optimise": opt["judge_calls"],
                "heldout": held["judge_calls"],
                **(
                    {"heldout_fitness_judge": held["fitness_judge"]["judge_calls"]}
                    if "fitness_judge" in held
                    else {}
                ),
            },
            "history": [
                {
                    k: e[k]
                    for k in ("generation", "best_fitness", "mean_fitness", "best_so_far", "sigma", "judge")
                }
                for e in opt["history"]
            ],
        }
    first = per_opt[0]
    result = {
        "question": "how far are extracted vectors from vectors optimised for judged behaviour?",
        "fitness": _fitness_text(first["settings"]["coherence_floor"]),
        "settings": first["settings"],
        "judge": first["judge"],
        "traits": per,
    }
    save_figure(
        out_png,
        optimisation_curves_figure(
            {t: p["history"] for t, p in per.items()},
            {t: p["training"]["start_fitness"] for t, p in per.items()},
        ),
    )
    write_json(out_json, result)  # last: its presence means every output was written
    return result


def _fitness_text(floor: float | None) -> str:
    text = "mean judge trait score over training answers"
    if floor is None:
        return text + "; no coherence gate"
    return text + f"; an answer counts 0 unless judged coherent >= {floor}"


def _cosine_null(opt: dict) -> dict:
    """The measured cosine (the mean over runs, else the one run's) against the same search on a
    noise fitness (`null.noise_null`), at the run's settings."""
    from traitscope.experiments.steering_optimisation.null import noise_null

    s, cosines = opt["settings"], opt["cosines"]
    runs = cosines.get("restarts_vs_mean_diff") or {}
    observed = runs.get("mean", cosines["optimised_vs_mean_diff"])
    return noise_null(
        opt["basis"]["components"],
        s["sigma0"],
        s["popsize"],
        s["generations"],
        runs.get("n", 1),
        opt["basis"]["mean_diff_in_basis"],
        observed,
        seed=s["seed"],
    )


def _heldout(held: dict, settings: dict) -> dict:
    """The held-out check as the criteria read it: its scorer's conditions, deltas and gain,
    that scorer's truth-set agreement, and (an independent scorer) the fitness judge's beside."""
    n_boot, seed = settings["n_boot"], settings["seed"]
    out = {
        "scorer": held.get("scorer", "fitness judge"),
        "judge": held.get("judge"),
        "conditions": held["conditions"],
        "steering_delta": held["steering_delta"],
        "gain_vs_mean_diff": gain_vs_mean_diff(held["scores"], n_boot, seed),
        "n_questions": held["n_questions"],
        "delta_test": held["delta_test"],
        "judge_truth_agreement": _agreement(held["judge_truth_agreement"])
        if held.get("judge_truth_agreement")
        else None,
    }
    if "fitness_judge" in held:
        fit = held["fitness_judge"]
        out["fitness_judge"] = {
            "judge": fit["judge"],
            "steering_delta": fit["steering_delta"],
            "gain_vs_mean_diff": gain_vs_mean_diff(fit["scores"], n_boot, seed),
        }
    return out


def _of_trait(record: dict, path: str | Path, name: str) -> dict:
    """`record`, checked to be `name`'s: another trait's file would report under this name."""
    require_trait(path, record.get("trait"), name, "keep --traits' order")
    return record


def _agreement(record: dict) -> dict:
    """The part of an agreement record the report and its criteria read."""
    keys = ("split", "auc", "ci_low", "ci_high", "n_pos", "n_neg", "reason")
    keys += ("mean_score_positive", "mean_score_negative")
    return {k: record.get(k) for k in keys}
