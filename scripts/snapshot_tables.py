"""The results regions read from snapshots of the main job's results in benchmarks/results
(the held-out hard negatives, the transfer table, CMA-ES's held-out check, the backdoor
experiment), and the link and CI helpers every region shares. Apart from results_tables.py,
which finds the regions in the pages and fills them, so each file stays one job.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: results_tables imports this module
    from results_tables import Sources


def _rel(path: Path, page: Path) -> str:
    """A path as a Markdown link target, relative to the page that shows it."""
    return Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix()


def _ci(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _diff(r: dict) -> str:
    return f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"


def hard_negatives(sources: Sources, page: Path) -> str:
    """The held-out hard negatives (issue 28) from the main job's snapshots: each trait and pool's
    AUC beside the bag of words fitted on its rows and prompt length (`transfer_*.json`, the
    run's transfer.json), and the AUC per category (`hard_negatives_default_*.json`, the external
    experiment's hard_negatives_results.json)."""
    transfers = sorted(sources.benchmarks.glob("transfer_default_*.json"))
    categories = sorted(sources.benchmarks.glob("hard_negatives_default_*.json"))
    if not transfers or not categories:
        return "No `transfer_default_*.json` / `hard_negatives_default_*.json` snapshot yet: copy a run's.\n"
    transfer = json.loads(transfers[-1].read_text())
    held = transfer["sets"]["hardneg_harmful"]["pools"]
    rows = [
        f"| `{trait}` | {pool} | {_ci(r['auc'])} | {r['vs_bag_of_words']['auc_b']:.3f} "
        f"| {_diff(r['vs_bag_of_words'])} | {r['vs_length']['auc_b']:.3f} |"
        for trait in transfer["traits"]
        for pool, by_trait in held.items()
        if (r := by_trait.get(trait))
    ]
    n = next(iter(next(iter(held.values())).values()))["auc"]
    out = (
        f"From [{transfers[-1].name}]({_rel(transfers[-1], page)}) (n = {n['n_pos']} + {n['n_neg']} "
        "held-out pairs, 95% CIs; each trait beside the bag of words fitted on its vector's rows):\n\n"
        "| trait | pool | hard-negative AUC | bag of words | trait - bag of words | length |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    external = json.loads(categories[-1].read_text())
    names = sorted(next(iter(external["traits"].values()))["by_category"])
    rows = [
        f"| `{trait}` ({external['position_of'][trait]}) | "
        + " | ".join(f"{r['by_category'][c]['auc']:.2f}" for c in names)
        + " |"
        for trait, r in external["traits"].items()
    ]
    out += (
        f"\nPer category (AUC, {external['n_harmful'] // len(names)} pairs each; the external experiment, "
        f"each trait at its pool, [{categories[-1].name}]({_rel(categories[-1], page)})):\n\n"
        f"| trait | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n" + "\n".join(rows) + "\n"
    )
    return out


def transfer(sources: Sources, page: Path) -> str:
    """The transfer table from the main job's snapshot (`transfer_default_*.json`, the run's
    transfer.json): every trait's AUC on every labelled set at each pool, marked where its
    paired CIs clear both surface baselines, with the baselines' AUCs beneath."""
    snapshots = sorted(sources.benchmarks.glob("transfer_default_*.json"))
    if not snapshots:
        return "No `transfer_default_*.json` snapshot yet: copy a run's transfer.json (results/traits/).\n"
    data = json.loads(snapshots[-1].read_text())
    sets, pools = list(data["sets"]), data["pools"]
    head = f"| trait | {' | '.join(f'`{s}`' for s in sets)} |\n|---|{'---|' * len(sets)}\n"

    def cell(trait: str, name: str) -> str:
        scored = [data["sets"][name]["pools"][pool][trait] for pool in pools]
        return " / ".join(f"{r['auc']['auc']:.2f}{'*' if r['beats_baselines'] else ''}" for r in scored)

    rows = [f"| `{t}` | " + " | ".join(cell(t, s) for s in sets) + " |" for t in data["traits"]]
    # the baselines each trait is compared with: length, and the bag of words `bag_of_words_of` names
    for base in ("length", *dict.fromkeys(data["bag_of_words_of"].values())):
        aucs = " | ".join(f"{data['sets'][s]['baselines'][base]['auc']:.2f}" for s in sets)
        own = base.partition("[")[2].rstrip("]")
        name = f"bag of words (`{own}`, its own)" if own else base.replace("_", " ")
        rows.append(f"| {name} | {aucs} |")
    sizes = ", ".join(f"{data['sets'][s]['n_harmful']} + {data['sets'][s]['n_harmless']}" for s in sets)
    return (
        f"From [{snapshots[-1].name}]({_rel(snapshots[-1], page)}): AUC at {' / '.join(pools)}; * where "
        "the paired CIs of its differences to prompt length and to the bag of words both lie above 0 "
        f"(beats both baselines). Harmful + harmless prompts per set: {sizes}.\n\n"
        + head
        + "\n".join(rows)
        + "\n"
    )


def _delta(d: dict) -> str:
    t = d["trait"]
    if t.get("ci_low") is None:
        return f"{t.get('mean_diff', float('nan')):+.1f}"
    return f"{t['mean_diff']:+.1f} (d_z [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}])"


def _gain(g: dict) -> str:
    ci = f" [{g['ci_low']:.2f}, {g['ci_high']:.2f}]" if g.get("ci_low") is not None else " (no CI)"
    return "n/a" if g.get("gain") is None else f"{g['gain']:.2f}{ci}"


def _margin(g: dict) -> str:
    """The criterion's number, (delta optimised - delta mean_diff) - 0.2 x |delta mean_diff|, with its CI."""
    if g.get("margin") is None:
        return "n/a"
    return f"{g['margin']:+.1f} [{g['margin_ci_low']:+.1f}, {g['margin_ci_high']:+.1f}]"


def cmaes(sources: Sources, page: Path) -> str:
    """CMA-ES's held-out check from a snapshot of the main job's extraction_gap.json
    (`cmaes_default_*.json`): per trait, each scorer's steering deltas against no vector, the
    gain over mean_diff, and the scorer's truth-set agreement; the training fitness beside."""
    snapshots = sorted(sources.benchmarks.glob("cmaes_default_*.json"))
    if not snapshots:
        return "No `cmaes_default_*.json` snapshot yet: copy a run's results/cmaes/extraction_gap.json.\n"
    gap = json.loads(snapshots[-1].read_text())
    rows = []
    for trait, t in gap["traits"].items():
        held, fitness_truth = t["heldout"], t.get("judge_truth_agreement")
        if held.get("scorer") == "independent":
            scorers = [("held-out scorer", held, held.get("judge_truth_agreement"))]
            scorers.append(("fitness judge", held["fitness_judge"], fitness_truth))
        else:
            scorers = [("fitness judge", held, fitness_truth)]
        for name, scored, agreement in scorers:
            judge = scored.get("judge") or {}
            features = (judge.get("classifier") or {}).get("features") or judge.get("backend", "?")
            deltas = scored["steering_delta"]
            rows.append(
                f"| `{trait}` | {name} ({features}) | {_ci(agreement)} | {_delta(deltas['mean_diff'])} "
                f"| {_delta(deltas['optimised'])} | {_gain(scored['gain_vs_mean_diff'])} "
                f"| {_margin(scored['gain_vs_mean_diff'])} |"
            )
    first = next(iter(gap["traits"].values()))
    training, n = first["training"], first["heldout"]["n_questions"]
    return (
        f"From [{snapshots[-1].name}]({_rel(snapshots[-1], page)}) ({n} held-out questions; deltas are "
        "trait-score points against no vector, with the d_z's 95% CI; gain = (delta optimised - delta "
        "mean_diff) / |delta mean_diff| with its paired bootstrap CI; margin = (delta optimised - delta "
        "mean_diff) - 0.2 x |delta mean_diff| with its paired bootstrap CI, what the criterion reads "
        "(met above 0: the gain exceeds 0.2); truth AUC: the scorer's agreement on the written truth "
        "set):\n\n"
        "| trait | scorer | truth AUC [95% CI] | delta mean_diff | delta optimised | gain | margin |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Training questions ({training['questions']}, the fitness judge): start "
        f"{training['start_fitness']:.1f}, best {training['best_fitness']:.1f} (generation "
        f"{training['best_generation']}); {_cosines(first['cosines'])}.\n"
    )


def _cosines(cosines: dict) -> str:
    """The optimised vector's cosine with mean_diff, and the optimiser runs' where there are several."""
    text = f"cosine(optimised, mean_diff) {cosines['optimised_vs_mean_diff']:.2f}"
    runs = cosines.get("restarts_vs_mean_diff") or {}
    if runs.get("ci_low") is None:
        return text + " (one optimiser run)"
    values = ", ".join(f"{v:.2f}" for v in runs["values"])
    text = (
        f"{text}, the best of {runs['n']} optimiser runs whose best vectors give {values}: mean "
        f"{runs['mean']:.2f} [{runs['ci_low']:.2f}, {runs['ci_high']:.2f}] (t interval over runs)"
    )
    null = cosines.get("noise_null")
    if null:  # what the same search reaches when the fitness is noise
        text += (
            f"; the same search on a noise fitness ends at {null['mean']:.2f} (95% of "
            f"{null['n_sim']} simulated searches in [{null['low']:.2f}, {null['high']:.2f}]; "
            f"two-sided p {null['p_two_sided']:.2f})"
        )
    return text


def _rate(r: dict) -> str:
    return f"{r['k']}/{r['n']}"


def backdoor(sources: Sources, page: Path) -> str:
    """The backdoor experiment from a snapshot of the main job's detection_auc.json
    (`backdoor_default_*.json`): how often each model shows the backdoor sentence under each
    prefix, then per trait and position the trigger-vs-control AUC on both models, the
    backdoored model's CI over pairs alone and over pairs and vector refits, and the difference."""
    snapshots = sorted(sources.benchmarks.glob("backdoor_default_*.json"))
    if not snapshots:
        copy = "copy a run's results/backdoor_detection/detection_auc.json"
        return f"No `backdoor_default_*.json` snapshot yet: {copy}.\n"
    result = json.loads(snapshots[-1].read_text())
    behaviour = [
        f"| {role} | {_rate(b['trigger']['backdoor_rate'])} | {_rate(b['control']['backdoor_rate'])} "
        f"| {_rate(b['trigger']['accuracy'])} | {_rate(b['control']['accuracy'])} |"
        for role, b in result["behaviour"].items()
    ]
    detection = []
    for trait, t in result["traits"].items():
        for position, entry in t["positions"].items():
            sep = entry["chosen_layer"]
            back = sep["backdoored"]
            over = back.get("over_vector_draws")
            refits = f"[{over['ci_low']:.3f}, {over['ci_high']:.3f}]" if over else "n/a"
            aucs = f"{_ci(sep['base'])} | {_ci(back)} | {refits}"
            detection.append(f"| `{trait}` | {position} | {aucs} | {_diff(sep['difference'])} |")
    return (
        f"From [{snapshots[-1].name}]({_rel(snapshots[-1], page)}) ({result['n_pairs']} held-out pairs; "
        "greedy answers; accuracy: the arithmetic answer is right):\n\n"
        "| model | backdoor sentence, trigger | backdoor sentence, control | accuracy, trigger "
        "| accuracy, control |\n"
        "|---|---|---|---|---|\n" + "\n".join(behaviour) + "\n\n"
        "Trigger (positive) vs control ROC-AUC of each trait's projection at its chosen layer, with "
        "95% CIs over pairs; the backdoored model's CI over pairs and refits of the vector beside it "
        "(what the criterion reads); difference = backdoored - base, paired over pairs:\n\n"
        "| trait | position | base AUC | backdoored AUC | over pairs and refits | difference |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(detection) + "\n"
    )
