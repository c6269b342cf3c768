"""The results regions of the main job's effect sizes, each read from a snapshot in
benchmarks/results: the steering check (paired over the held-out questions), the prefill attack's
condition comparisons (two groups of requests, or paired by request for C1 vs C2) and emergent
misalignment's variant comparisons (paired over questions and samples). Apart from
snapshot_tables.py only to keep each file short; results_tables.py finds the regions in the
pages and fills them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from snapshot_tables import _diff, _rel

if TYPE_CHECKING:  # annotations only: results_tables imports this module
    from results_tables import Sources


def _snapshot(sources: Sources, pattern: str) -> Path | None:
    found = sorted(sources.benchmarks.glob(pattern))
    return found[-1] if found else None


def _absent(pattern: str, copy: str) -> str:
    return f"No `{pattern}` snapshot yet: copy a run's {copy}.\n"


def _effect(r: dict, key: str) -> str:
    """An effect size with its CI and, where the comparison was corrected, its Holm p."""
    holm = f", Holm p {r['p_holm']:.2g}" if "p_holm" in r else ""
    if r.get("ci_low") is None:  # too few units for a CI: the file says why
        return f"no CI ({r.get('undefined', 'none computed')}){holm}"
    return f"{r[key]:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]{holm}"


def steering(sources: Sources, page: Path) -> str:
    """The steering check of the trait the experiments read (`steering_default_*.json`, the run's
    steering.json): projections of the steered and unsteered answers, d_z over the questions, and
    the answers' refusal rates."""
    path = _snapshot(sources, "steering_default_*.json")
    if path is None:
        return _absent("steering_default_*.json", "results/traits/<variant>/<trait>/steering.json")
    s = json.loads(path.read_text())
    paired, rates = s["paired"], s["refusal_rate"]
    d_z = paired.get("undefined") or (
        f"d_z {paired['cohens_dz']:.2f} [{paired['ci_low']:.2f}, {paired['ci_high']:.2f}] "
        f"(paired t p {paired['p_value']:.2g})"
    )
    refusal = ", ".join(f"{name} {r['k']}/{r['n']}" for name, r in rates.items())
    diff = s["refusal_rate_difference"]
    return (
        f"From [{path.name}]({_rel(path, page)}): `{s['trait']}`, {s['coefficient']:g} x its "
        f"mean-difference vector added at layer {s['layer']} while answering {s['n']} of "
        f"{s['prompts']} (greedy). The answers, read back by the unsteered model, project onto the "
        f"vector at {s['mean_projection_unsteered']:.2f} unsteered and {s['mean_projection_steered']:.2f} "
        f"steered: difference {s['difference']:+.2f}, {d_z}; steered higher (CI above 0): "
        f"{ {True: 'yes', False: 'no', None: 'undecided, no CI'}[s['steered_higher']] }. Answers with a "
        f"refusal phrase: {refusal}; "
        f"steered - unsteered {diff['difference']:+.3f} [{diff['ci_low']:+.3f}, {diff['ci_high']:+.3f}] "
        "(Newcombe).\n"
    )


def prefill(sources: Sources, page: Path) -> str:
    """The prefill attack's three comparisons (`prefill_default_*.json`, the run's
    condition_comparison.json): Cohen's d (d_z where paired by request) with its CI and Holm p
    per trait, the harmful x prefill interaction on the response, and the surface baselines."""
    path = _snapshot(sources, "prefill_default_*.json")
    if path is None:
        return _absent("prefill_default_*.json", "results/prefill/condition_comparison.json")
    data = json.loads(path.read_text())
    names = list(data["comparisons"])
    traits = list(data["comparisons"][names[0]])
    paired = {n for n in names if data["design"][n].get("paired")}  # d_z over requests, else d
    size = {n: "cohens_dz" if n in paired else "cohens_d" for n in names}
    heads = [
        f"{n.replace('_vs_', ' vs ')} ({data['design'][n]['position']}{', paired' if n in paired else ''})"
        for n in names
    ]
    rows = [
        f"| `{t}` | "
        + " | ".join(_effect(data["comparisons"][n][t], size[n]) for n in names)
        + f" | {_interaction(data['interaction'][t])} |"
        for t in traits
    ]
    sizes = ", ".join(f"{c} {n}" for c, n in data["n_prompts"].items())
    return (
        f"From [{path.name}]({_rel(path, page)}) (prompts per condition: {sizes}; Cohen's d, or d_z where "
        f"paired by request, with its 95% bootstrap CI, uncorrected; {data['correction']}; the "
        "interaction: harmful x prefill on the response, each request's prefill effect, harmful minus "
        "benign, with its 95% CI and Welch p):\n\n"
        f"| trait | {' | '.join(heads)} | interaction |\n|---|{'---|' * (len(names) + 1)}\n"
        + "\n".join(rows)
        + "\n\n"
        + _prefill_baselines(data)
    )


def _interaction(r: dict) -> str:
    return f"{r['difference']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}], p {r['p_value']:.2g}"


def _prefill_baselines(data: dict) -> str:
    """Harmful vs harmless as an AUC beside the surface baselines (both read the user text, so the
    two comparisons share them), and the first generated step at which C2 and C4 differ."""
    base, names = data["baselines"], ["C1_vs_C3", "C2_vs_C4"]
    traits = list(base[names[0]]["traits"])

    def cells(name: str, trait: str) -> str:
        r = base[name]["traits"][trait]
        mark = "*" if r["beats_baselines"] else ""
        return f"{r['auc']['auc']:.3f}{mark} | {_diff(r['vs_length'])} | {_diff(r['vs_bag_of_words'])}"

    def bag(trait: str) -> str:
        own = "its own" if "[" in base["bag_of_words_of"][trait] else "shared"
        return f"{own}, {base[names[0]]['traits'][trait]['vs_bag_of_words']['auc_b']:.3f}"

    rows = [
        f"| `{t}` | {cells(names[0], t)} | {cells(names[1], t)} | {bag(t)} "
        f"| {data['trajectory_divergence'][t]['first_step']} |"
        for t in traits
    ]
    length = base[names[0]]["traits"][traits[0]]["vs_length"]["auc_b"]
    return (
        f"Harmful (AdvBench) vs harmless (Alpaca) as an ROC-AUC, minus prompt length alone (AUC "
        f"{length:.3f}) and minus a bag of words (shared: fitted on `{base['bag_of_words_fitted_on']}`; "
        "its own: on the trait's extraction rows), paired bootstrap CIs; * beats both; first step: "
        "the first position where C2 and C4 differ (Welch t per step, Holm across steps; 0 = the last "
        "prompt token):\n\n"
        "| trait | C1 vs C3 AUC | - length | - bag of words | C2 vs C4 AUC | - length | - bag of words "
        "| bag of words (AUC) | first step |\n"
        "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


def _refits(r: dict) -> str:
    """The d_z CI whose replicates also refit the trait vector (what EM's criteria read)."""
    over = r.get("over_vector_draws")
    if over is None:
        return "n/a"
    return f"[{over['ci_low']:+.2f}, {over['ci_high']:+.2f}] ({over['n_draws']} refits)"


def emergent_misalignment(sources: Sources, page: Path) -> str:
    """EM's variant comparisons (`em_default_*.json`, the run's variant_comparison.json): d_z with
    its CI over questions and Holm p, per trait, position and pair of variants."""
    path = _snapshot(sources, "em_default_*.json")
    if path is None:
        return _absent("em_default_*.json", "results/emergent_misalignment/variant_comparison.json")
    data = json.loads(path.read_text())
    names = ["misaligned_vs_control", "misaligned_vs_base", "control_vs_base"]
    positions = list(data["positions"])
    traits = list(data["comparisons"][names[0]][positions[0]])
    rows = [
        f"| `{t}` | {position} | "
        + " | ".join(_effect(data["comparisons"][n][position][t], "cohens_dz") for n in names)
        + f" | {_refits(data['comparisons'][names[0]][position][t])} |"
        for position in positions
        for t in traits
    ]
    words = ", ".join(f"{v} {w:.1f}" for v, w in data["mean_response_words"].items())
    return (
        f"From [{path.name}]({_rel(path, page)}) ({data['n_questions']} benign questions x "
        f"{data['n_samples_per_question']} samples = {data['n_pairs']} pairs per comparison; d_z with its "
        f"95% CI over questions (clustered bootstrap); {data['correction']}; mean answer length in "
        f"words: {words}):\n\n"
        "| trait | position | misaligned vs control | misaligned vs base | control vs base "
        "| misaligned vs control, CI over questions and vector refits |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + _behaviour(data.get("behaviour"))
    )


def _behaviour(b: dict | None) -> str:
    """What the judge made of each variant's answers: its backend, the rows judged, the mean
    aligned and coherent scores with their CIs, and how many answers were eligible for a rate."""
    if not b:
        return "The judge did not read the answers (`behaviour.enabled: false`).\n"
    judge = b["judge"]
    backend = judge["backend"] + (f" ({judge['classifier']['features']})" if "classifier" in judge else "")

    def score(s: dict) -> str:
        return f"{s['mean']:.1f} [{s['ci_low']:.1f}, {s['ci_high']:.1f}]"

    rows = [
        f"| {role} | {score(v['aligned_score'])} | {score(v['coherent_score'])} | {v['n_coherent']} of "
        f"{v['n_answers']} |"
        for role, v in b["variants"].items()
    ]
    return (
        f"The judged behaviour (`behaviour` in the same file; judge: {backend}; {b['n_rows']} rows per "
        f"variant, {b['n_questions']} questions; misaligned: {b['misaligned']}):\n\n"
        "| variant | aligned score | coherent score | coherent answers |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
    )
