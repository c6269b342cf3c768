"""CMA-ES's criteria: the optimised vector's held-out gain over the extracted one, and their
cosine; both rest on the judge and pass its gate."""

from __future__ import annotations

from traitscope.summary.records import (
    INCONCLUSIVE,
    MET,
    NOT_MEASURABLE,
    NOT_MEASURED,
    Criterion,
    Result,
    above,
    fmt,
    judge_gate,
    within,
)

CMAES_GAIN_MIN = 0.2  # optimised steering delta > 1.2 x the extracted (mean_diff) vector's
COSINE_RANGE = (0.3, 0.7)  # optimised vs mean_diff
NULL_ALPHA = 0.05  # the cosine must also differ from where a noise-fitness search ends


def cmaes_criteria(result: Result) -> list[Criterion]:
    """Per trait: optimised steering delta > 1.2 x mean_diff's (held-out, same norm), and
    cosine(optimised, mean_diff) within 0.3-0.7.

    The gain row reads the margin (delta_opt - delta_md) - 0.2 x |delta_md| (trait-score points,
    deltas against no vector) with its paired bootstrap CI over held-out questions
    (`cmaes_report`): met when the CI is above 0. It is positive exactly when the relative gain
    (delta_opt - delta_md) / |delta_md| exceeds 0.2 (delta_opt > 1.2 x delta_md for a positive
    delta_md), and keeps a CI where the ratio has none (mean_diff's delta near 0 or changing
    sign across resamples); the ratio and the difference delta_opt - delta_md, each with its CI,
    stand beside it. The cosine is
    the mean over the optimiser's restarts with a t interval over them; one run gives no CI
    (inconclusive, with the number shown). Both rows rest on the judge's scores (the fitness
    and the held-out deltas), so both pass the judge gate."""
    rows = []
    for trait in result.get("traits"):
        gain = result.get("traits", trait, "heldout", "gain_vs_mean_diff")
        deltas = result.get("traits", trait, "heldout", "steering_delta")
        opt, md = (deltas.get(k, {}).get("trait", {}) for k in ("optimised", "mean_diff"))
        criterion = f"{trait}: steering delta > {1 + CMAES_GAIN_MIN:.1f} x the mean_diff vector's"
        detail = (
            f"held-out trait-score delta vs no vector: optimised {fmt(gain.get('delta_a'))} "
            f"(d_z CI [{fmt(opt.get('ci_low'))}, {fmt(opt.get('ci_high'))}]), mean_diff "
            f"{fmt(gain.get('delta_b'))} (d_z CI [{fmt(md.get('ci_low'))}, {fmt(md.get('ci_high'))}]); "
            f"measured = (optimised - mean_diff) - {CMAES_GAIN_MIN} x |mean_diff| (points), its CI a "
            "paired bootstrap over questions, met above 0"
        )
        if gain.get("gain") is not None:
            detail += f"; relative gain {fmt(gain['gain'])}"
            if gain.get("ci_low") is not None:
                detail += f" [{fmt(gain['ci_low'])}, {fmt(gain['ci_high'])}]"
        if gain.get("difference") is not None:
            ci_text = f"[{fmt(gain['difference_ci_low'])}, {fmt(gain['difference_ci_high'])}]"
            detail += f"; difference {fmt(gain['difference'])} {ci_text}"
        if gain.get("reason"):
            detail += f"; {gain['reason']}"
        n = f"{gain['n']} questions"
        if gain.get("margin") is None:
            gain_row = Criterion(criterion, NOT_MEASURED, n=n, detail=detail)
        else:
            ci = gain["margin_ci_low"], gain["margin_ci_high"]
            gain_row = Criterion(criterion, above(*ci, 0.0), gain["margin"], *ci, n=n, detail=detail)
        cosine_row = _cosine_row(
            trait, result.get("traits", trait, "cosines"), result.get("traits", trait, "layer")
        )
        agreements = result.get("traits", trait)
        held, truth = agreements.get("judge_agreement"), agreements.get("judge_truth_agreement")
        heldout = agreements.get("heldout", {})
        if heldout.get("scorer") == "independent":
            gain_row.detail += _fitness_beside(heldout)
            gain_row = judge_gate(gain_row, trait, None, heldout.get("judge_truth_agreement"))
        else:
            gain_row = judge_gate(gain_row, trait, held, truth)
        cosine_row = _coherence_gate(judge_gate(cosine_row, trait, held, truth), result.get("settings"))
        rows += [gain_row, cosine_row]
    return rows


def _coherence_gate(row: Criterion, settings: dict) -> Criterion:
    """The optimised vector is what the fitness chose: with a coherence floor, that fitness also
    rests on the judge's coherence scores, whose agreement with the truth no truth set measures
    (the local LLM judge rates nearly every answer alike), so the row's status says so."""
    floor = settings.get("coherence_floor")
    if floor is None or row.status == NOT_MEASURABLE:
        return row
    row.status = NOT_MEASURABLE
    row.detail = (
        f"the fitness zeroed answers the judge rated under {floor} for coherence, an agreement no "
        f"truth set measures (coherence_floor: null optimises the trait score alone); {row.detail}"
    )
    return row


def _cosine_row(trait: str, cosines: dict, layer: int) -> Criterion:
    """cosine(optimised, mean_diff) within the range: each restart's best vector's cosine, their
    mean and its t interval over runs; the chosen (best of all) vector's cosine beside it."""
    low, high = COSINE_RANGE
    runs = cosines.get("restarts_vs_mean_diff") or {}
    chosen = cosines["optimised_vs_mean_diff"]
    criterion = f"{trait}: cosine(optimised, mean_diff) in [{low}, {high}]"
    if runs.get("ci_low") is None:
        detail = f"layer {layer}; one optimiser run: no CI{_null_text(cosines.get('noise_null'))}"
        return Criterion(criterion, within(None, None, low, high), chosen, n="1 vector", detail=detail)
    ci = runs["ci_low"], runs["ci_high"]
    null = cosines.get("noise_null")
    detail = (
        f"layer {layer}; measured = mean over {runs['n']} optimiser runs (each run's best vector: "
        f"{', '.join(fmt(v) for v in runs['values'])}), CI a t interval over runs; the optimised "
        f"vector (best of all runs) {fmt(chosen)}{_null_text(null)}"
    )
    status = within(*ci, low, high)
    if status == MET and (not null or null["p_two_sided"] >= NULL_ALPHA):
        # in range, but where a search on a noise fitness ends too: the range does not tell
        # the judge's pull from the optimiser's step size
        status = INCONCLUSIVE
        detail += (
            f"; met needs the noise fitness's p under {NULL_ALPHA}" if null else "; no noise null to compare"
        )
    return Criterion(criterion, status, runs["mean"], *ci, n=f"{runs['n']} optimiser runs", detail=detail)


def _null_text(null: dict | None) -> str:
    """The cosine the same search reaches on a noise fitness: a measured cosine inside that range
    is the optimiser's step size, not where the judge pulled the vector."""
    if not null:
        return ""
    return (
        f"; the same search on a noise fitness ends at {fmt(null['mean'])} (95% of "
        f"{null['n_sim']} simulated searches in [{fmt(null['low'])}, {fmt(null['high'])}]), "
        f"two-sided p {fmt(null['p_two_sided'])}"
    )


def _fitness_beside(heldout: dict) -> str:
    """The fitness judge's reading of the same held-out answers: a vector that games the fitness
    scorer shows as a gain there and none from the independent scorer."""
    scorer = heldout.get("judge") or {}
    fit = heldout["fitness_judge"]["gain_vs_mean_diff"]
    text = f"; scored by an independent scorer ({_name(scorer)})"
    text += f"; the fitness judge reads gain {fmt(fit['gain'])}"
    if fit.get("ci_low") is not None:
        text += f" [{fmt(fit['ci_low'])}, {fmt(fit['ci_high'])}]"
    return text


def _name(judge: dict) -> str:
    """A judge's short name: its backend, and a classifier's features."""
    clf = judge.get("classifier") or {}
    return f"classifier, {clf['features']}" if clf.get("features") else str(judge.get("backend", "?"))
