"""Every figure the pipeline draws, built from the same numbers its JSON results hold.

Functions return a Figure; the caller saves it with `traitscope.io.save_figure`. Figures sit
on an Agg canvas without pyplot, so no GUI backend is needed and no global figure state leaks
between the many figures one Snakemake job may draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from traitscope.stats import mean_with_ci

CONDITION_COLORS = {"C1": "tab:orange", "C2": "tab:red", "C3": "tab:cyan", "C4": "tab:blue"}
GROUP_COLORS = {"harmful": "tab:red", "harmless": "tab:blue"}


def _figure(ncols: int, figsize: tuple[float, float], nrows: int = 1) -> tuple[Figure, np.ndarray]:
    """A Figure on an Agg canvas and its axes as a 2-D array; constrained layout leaves room for titles."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _ci_errors(entries: list[dict], estimate: str) -> np.ndarray:
    """Asymmetric error-bar lengths [below, above] from the entries' ci_low / ci_high."""
    return np.array(
        [[e[estimate] - e["ci_low"] for e in entries], [e["ci_high"] - e[estimate] for e in entries]]
    )


def layer_scores_figure(result: dict) -> Figure:
    """Held-out AUC and Cohen's d per layer for each extraction method, chosen layer marked."""
    fig, axes = _figure(2, (10, 3.8))
    ax_auc, ax_d = axes[0]
    for method, rows in result["methods"].items():
        layers = [r["layer"] for r in rows]
        d = [r["cohens_d"] if np.isfinite(r["cohens_d"]) else np.nan for r in rows]
        ax_auc.plot(layers, [r["auc"] for r in rows], marker="o", ms=3, label=method)
        ax_d.plot(layers, d, marker="o", ms=3, label=method)
    chosen = result["chosen"]
    for ax in (ax_auc, ax_d):
        ax.axvline(chosen["layer"], color="grey", ls="--", lw=1, label=f"chosen ({chosen['method']})")
        ax.set_xlabel("layer (decoder block output)")
        ax.grid(alpha=0.3)
    ax_auc.set_ylabel("held-out ROC-AUC (positive vs negative)")
    ax_d.set_ylabel("held-out Cohen's d of projection (SD units)")
    ax_auc.legend(fontsize=8)
    fig.suptitle(
        f"{result['trait']} on {result['model']}: separation by layer "
        f"(n={result['n_positive']}+{result['n_negative']})"
    )
    return fig


def auc_figure(aucs: dict, title: str) -> Figure:
    """One bar per trait: ROC-AUC of harmful vs harmless with its bootstrap CI (auc_with_ci entries)."""
    fig, axes = _figure(1, (6, 3.5))
    ax = axes[0, 0]
    names = list(aucs)
    entries = [aucs[n] for n in names]
    ax.barh(names, [e["auc"] for e in entries], xerr=_ci_errors(entries, "auc"), capsize=4, color="tab:red")
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROC-AUC (harmful vs harmless), 95% stratified bootstrap CI")
    ax.set_ylabel("trait")
    ax.set_title(title)
    return fig


def category_auc_figure(result: dict, traits: list[str]) -> Figure:
    """Per BeaverTails category and trait: AUC vs safe pairs with its CI, categories sorted by AUC."""
    fig, axes = _figure(len(traits), (4.5 * len(traits), 5))
    for ax, trait in zip(axes[0], traits):
        entries = {c: e[trait]["auc"] for c, e in result["categories"].items() if "auc" in e[trait]}
        cats = sorted(entries, key=lambda c: entries[c]["auc"])
        ordered = [entries[c] for c in cats]
        ax.barh(
            [c.replace(",", ", ") for c in cats],
            [e["auc"] for e in ordered],
            xerr=_ci_errors(ordered, "auc"),
            capsize=3,
            alpha=0.75,
        )
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set_xlim(0, 1)
        ax.set_xlabel("ROC-AUC vs safe pairs, 95% bootstrap CI")
        ax.set_title(trait)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("BeaverTails: does each trait separate a harm category from safe responses?")
    return fig


def score_distribution_figure(dists: dict, failures: dict, traits: list[str]) -> Figure:
    """Harmful vs harmless score distributions per dataset and trait, with the Youden threshold.

    Each group is normalised on its own (density, not counts): the groups differ in size,
    and it is the overlap of their shapes that the threshold has to cut.
    """
    fig, axes = _figure(len(traits), (4.5 * len(traits), 3.4 * len(dists)), nrows=len(dists))
    for row, name in enumerate(dists):
        for ax, trait in zip(axes[row], traits):
            frame = pd.concat(
                pd.DataFrame({"score": np.asarray(dists[name][trait][g], float), "group": g})
                for g in GROUP_COLORS
            )
            sns.histplot(
                frame,
                x="score",
                hue="group",
                hue_order=list(GROUP_COLORS),
                palette=GROUP_COLORS,
                bins=20,
                stat="density",
                common_norm=False,
                element="step",
                kde=True,
                ax=ax,
            )
            cut = failures[name][trait]
            ax.axvline(cut["threshold"], color="k", ls="--", lw=1)
            sns.move_legend(ax, "best", title=None, fontsize=7)
            ax.set_title(
                f"{name}: {trait}\nYouden threshold (dashed) {cut['threshold']:.2f}, J={cut['j']:.2f}"
            )
            ax.set_xlabel("projection at chosen layer (activation units)")
            ax.set_ylabel("density (area 1 per group)")
    return fig


def prefill_grid_figure(condition_means: dict, traits: list[str]) -> Figure:
    """The 2x2 prefill design per trait: response-mean score per condition with its JSON CI."""
    fig, axes = _figure(len(traits), (4.5 * len(traits), 4))
    for ax, trait in zip(axes[0], traits):
        for kind, pair in (("harmful", ("C1", "C2")), ("benign", ("C3", "C4"))):
            entries = [condition_means[trait][c] for c in pair]
            ax.errorbar(
                [0, 1],
                [e["mean"] for e in entries],
                yerr=_ci_errors(entries, "mean"),
                marker="o",
                capsize=4,
                color=CONDITION_COLORS[pair[1]],
                label=f"{kind} prompt ({pair[0]} n={entries[0]['n']}, {pair[1]} n={entries[1]['n']})",
            )
        ax.set_xticks([0, 1], ["no prefill", "compliance prefill"])
        ax.set_xlim(-0.3, 1.3)
        ax.set_title(trait)
        ax.set_ylabel("mean projection of response\n(activation units)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Prefill attack 2x2: mean trait score of the response, 95% percentile-bootstrap CI")
    return fig


def trajectory_figure(
    traj: pd.DataFrame, traits: list[str], divergence: dict, n_boot: int = 2000, seed: int = 0
) -> Figure:
    """Per-token score per condition: mean and 95% percentile-bootstrap CI of the mean at each step."""
    fig, axes = _figure(len(traits), (5.5 * len(traits), 4.2))
    for ax, trait in zip(axes[0], traits):
        t = traj[traj["trait"] == trait]
        for condition, color in CONDITION_COLORS.items():
            by_step = t[t["condition"] == condition].groupby("step")["score"]
            if not len(by_step):
                continue
            rows = []
            for step, scores in by_step:
                if len(scores) >= 2:
                    rows.append({"step": step, **mean_with_ci(scores.to_numpy(), n_boot=n_boot, seed=seed)})
                else:  # a single prompt reaches this step: a mean without a band
                    rows.append(
                        {"step": step, "mean": float(scores.iloc[0]), "ci_low": np.nan, "ci_high": np.nan}
                    )
            band = pd.DataFrame(rows)
            ax.plot(band["step"], band["mean"], color=color, label=condition)
            ax.fill_between(band["step"], band["ci_low"], band["ci_high"], color=color, alpha=0.15)
        pre = t.loc[t["position"] == "prefill", "step"]
        if len(pre):
            ax.axvspan(
                pre.min() - 0.5, pre.max() + 0.5, color="grey", alpha=0.12, label="prefill tokens (C2, C4)"
            )
        first = divergence[trait]["first_step"]
        if first is not None:
            ax.axvline(first, color="k", ls="--", lw=1, label=f"C2/C4 diverge at {first}")
        ax.set_xlabel("token step (0 = last prompt token)")
        ax.set_ylabel("mean projection over prompts\n(activation units)")
        ax.set_title(trait)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(
        "Per-token trait score at each trait's chosen layer: mean and 95% percentile-bootstrap CI per step\n"
        "(C1 harmful, C2 harmful+prefill, C3 benign, C4 benign+prefill; then generated tokens)"
    )
    return fig


def variant_distribution_figure(
    scores: pd.DataFrame, traits: list[str], variants: list[str], positions: tuple[str, ...]
) -> Figure:
    """Per trait (columns) and position (rows): each variant's scores on the same prompts,
    as violins with the prompts drawn over them; `scores` has one column per variant."""
    fig, axes = _figure(len(traits), (3.6 * len(traits), 3.4 * len(positions)), nrows=len(positions))
    for row, position in enumerate(positions):
        for ax, trait in zip(axes[row], traits):
            at = scores[(scores["position"] == position) & (scores["trait"] == trait)]
            long = at.melt(value_vars=variants, var_name="variant", value_name="score")
            sns.violinplot(
                long, x="variant", y="score", order=variants, inner=None, cut=0, color="0.85", ax=ax
            )
            sns.stripplot(long, x="variant", y="score", order=variants, size=2.5, alpha=0.6, ax=ax)
            ax.set_title(f"{trait}\n{position} (n={len(at)} prompts)", fontsize=9)
            ax.set_xlabel("")
            ax.set_ylabel("projection at chosen layer (activation units)")
    return fig


def finetune_loss_figure(record: dict) -> Figure:
    """Training loss per optimizer step (finetune's loss.json), the learning rate on a second axis."""
    fig, axes = _figure(1, (7, 3.8))
    ax = axes[0, 0]
    steps = pd.DataFrame(record["steps"])
    sns.lineplot(steps, x="step", y="loss", marker="o", ms=3, color="tab:blue", label="training loss", ax=ax)
    lr_ax = ax.twinx()
    lr_ax.plot(steps["step"], steps["lr"], color="grey", ls="--", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate (AdamW)")
    starts = steps.groupby("epoch")["step"].min().iloc[1:]
    for first in starts:
        ax.axvline(first - 0.5, color="k", ls=":", lw=1)
    handles = ax.get_legend_handles_labels()
    lr_handles = lr_ax.get_legend_handles_labels()
    ax.legend(handles[0] + lr_handles[0], handles[1] + lr_handles[1], fontsize=8)
    ax.set_xlabel("optimizer step" + (" (dotted: epoch boundary)" if len(starts) else ""))
    ax.set_ylabel("training loss\n(mean cross-entropy per assistant token, nats)")
    ax.grid(alpha=0.3)
    settings = record["settings"]
    ax.set_title(
        f"LoRA finetune of {record['base_model']} (rank {settings['rank']}, lr {settings['lr']:g}): "
        f"{record['n_examples']} examples, {settings['epochs']} epoch(s), {record['n_steps']} steps",
        fontsize=9,
    )
    return fig


MODEL_COLORS = {"base": "tab:blue", "backdoored": "tab:red"}


def backdoor_trait_figure(result: dict, traits: list[str], positions: list[str]) -> Figure:
    """Per trait (columns) and position (rows): trigger-vs-control AUC by layer on the base and
    the backdoored model, 95% bootstrap bands, the trait's chosen layer dashed, the surface
    baselines' AUCs in green."""
    fig, axes = _figure(len(traits), (4.6 * len(traits), 3.6 * len(positions)), nrows=len(positions))
    for row, position in enumerate(positions):
        for ax, trait in zip(axes[row], traits):
            entry = result["traits"][trait]
            at = entry["positions"][position]
            layers = at["by_layer"] or [{"layer": entry["chosen_layer"], **at["chosen_layer"]}]
            xs = [e["layer"] for e in layers]
            for role, color in MODEL_COLORS.items():
                ys = [e[role]["auc"] for e in layers]
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{result['variants'][role]} ({role})")
                ax.fill_between(
                    xs,
                    [e[role]["ci_low"] for e in layers],
                    [e[role]["ci_high"] for e in layers],
                    color=color,
                    alpha=0.15,
                )
            ax.axhline(0.5, color="grey", lw=1)
            for (name, base), style in zip(result.get("baselines", {}).items(), (":", "-.")):
                ax.axhline(base["auc"], color="tab:green", ls=style, lw=1, label=f"{name} baseline")
            ax.axvline(entry["chosen_layer"], color="k", ls="--", lw=1)
            diff = at["chosen_layer"]["difference"]
            ax.set_title(
                f"{trait}, {position}\nchosen layer {entry['chosen_layer']} (dashed): backdoored - base = "
                f"{diff['difference']:+.2f} [{diff['ci_low']:+.2f}, {diff['ci_high']:+.2f}]",
                fontsize=9,
            )
            ax.set_xlabel("layer (decoder block output)")
            ax.set_ylabel("ROC-AUC, trigger vs control\n(95% bootstrap band)")
            ax.set_ylim(0, 1.02)  # a baseline at 1 stays visible
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"Trigger vs control on {result['n_pairs']} held-out pairs: "
        "trait projections (base-model vectors) on each model"
    )
    return fig


def early_detection_figure(result: dict, traits: list[str]) -> Figure:
    """Per trait at its chosen layer: trigger-vs-control AUC at each token position on both
    models with 95% bootstrap CIs; the threshold, generated tokens shaded, the earliest
    position where only the backdoored model exceeds the threshold marked."""
    info = result["token_positions"]
    order = info["order"]
    fig, axes = _figure(1, (max(8.0, 0.45 * len(order)) + 3, 3.2 * len(traits)), nrows=len(traits))
    x = {label: i for i, label in enumerate(order)}
    for row, trait in enumerate(traits):
        ax = axes[row, 0]
        entry = info["by_trait"][trait]
        for k, (role, color) in enumerate(MODEL_COLORS.items()):
            points = entry["by_position"][role]
            labels = [lab for lab in order if lab in points]
            es = [points[lab] for lab in labels]
            ax.errorbar(
                [x[lab] + (k - 0.5) * 0.2 for lab in labels],
                [e["auc"] for e in es],
                yerr=_ci_errors(es, "auc"),
                marker="o",
                ms=3,
                capsize=2,
                color=color,
                label=f"{result['variants'][role]} ({role})",
            )
        generated = [x[lab] for lab in order if lab.startswith("g")]
        if generated:
            ax.axvspan(
                min(generated) - 0.5, max(generated) + 0.5, color="grey", alpha=0.12, label="generated tokens"
            )
        constant = [
            x[lab]
            for lab in order
            if all(
                entry["by_position"][role].get(lab, {}).get("same_text_within_condition")
                for role in MODEL_COLORS
            )
        ]
        for k, pos in enumerate(constant):
            ax.axvspan(
                pos - 0.5,
                pos + 0.5,
                facecolor="none",
                edgecolor="0.6",
                hatch="//",
                lw=0,
                label="every prompt of a condition has read\nthe same text here (AUC 0, 0.5 or 1)"
                if k == 0
                else None,
            )
        ax.axhline(info["threshold"], color="k", ls=":", lw=1, label=f"threshold {info['threshold']}")
        ax.axhline(0.5, color="grey", lw=1)
        first = entry["earliest"]["position"]
        if first is not None:
            ax.axvline(
                x[first], color="tab:red", ls="--", lw=1, label=f"earliest (base within threshold): {first}"
            )
        ax.set_xticks(range(len(order)), order, rotation=90, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("ROC-AUC, trigger vs control\n(95% bootstrap CI)")
        ax.set_title(f"{trait} at its chosen layer {result['traits'][trait]['chosen_layer']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axes[-1, 0].set_xlabel(
        "token position: prefix_end = last token where the pair differs, p<j> = j-th prompt token after it, "
        "g<j> = j-th generated token"
    )
    fig.suptitle("How early does the trigger show? Per-token trait projections on held-out pairs")
    return fig


def sae_training_figure(record: dict, firing_rates: list[float]) -> Figure:
    """Left: fraction of variance explained and dead-latent share during training. Right: how
    often each latent fires, log scale, dead latents counted."""
    fig, axes = _figure(2, (11, 3.8))
    ax, ax_rate = axes[0]
    curve = pd.DataFrame(record["curve"])
    held = record["held_out"]
    if len(curve):
        ax.plot(
            curve["tokens"],
            curve["fraction_variance_explained"],
            color="tab:blue",
            label="FVE (training batch)",
        )
        twin = ax.twinx()
        twin.plot(
            curve["tokens"],
            curve["dead_fraction"],
            color="grey",
            ls="--",
            label="dead share (training window)",
        )
        twin.set_ylabel("share of latents dead in training")
        twin.set_ylim(0, 1)
        ax.set_xlabel("training tokens seen (thousands)")
        ax.xaxis.set_major_formatter(lambda value, _: f"{value / 1000:g}")
        ax.legend(loc="lower left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
        title = "TopK SAE training"
    else:
        ax.text(
            0.5,
            0.5,
            f"loaded from {record.get('loaded_from')}\n(no training curve)",
            ha="center",
            va="center",
        )
        ax.set_xlabel("(no training here)")
        title = "SAE loaded from a path"
    ax.axhline(held["fraction_variance_explained"], color="tab:green", ls=":", label="held-out FVE")
    ax.set_ylabel("fraction of variance explained")
    ax.set_ylim(min(0.0, held["fraction_variance_explained"]), 1)
    ax.set_title(
        f"{title}, layer {record['layer']}: held-out FVE {held['fraction_variance_explained']:.3f}, "
        f"L0 {held['mean_l0']:.1f} (n={held['n_tokens']} tokens)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    rates = np.asarray(firing_rates, float)
    dead = int((rates == 0).sum())
    alive = rates[rates > 0]
    if len(alive):
        sns.histplot(x=np.log10(alive), bins=40, color="tab:purple", ax=ax_rate)
    ax_rate.set_xlabel("firing frequency, log10 of the share of tokens the latent fires on")
    ax_rate.set_ylabel("latents (count)")
    ax_rate.set_title(
        f"latent firing frequency: {dead} of {len(rates)} never fire ({dead / len(rates):.1%} dead)",
        fontsize=9,
    )
    ax_rate.grid(alpha=0.3)
    return fig


def optimisation_curves_figure(histories: dict[str, list[dict]], start: dict[str, float]) -> Figure:
    """Per trait: CMA-ES best and mean fitness per generation (the extracted start dashed), and
    the judge calls each generation made (computed vs answered by the cache)."""
    fig, axes = _figure(2, (10, 3.4 * len(histories)), nrows=len(histories))
    for row, (trait, history) in enumerate(histories.items()):
        ax_fit, ax_calls = axes[row]
        gens = [e["generation"] for e in history]
        ax_fit.plot(gens, [e["best_fitness"] for e in history], marker="o", ms=4, label="best of generation")
        ax_fit.plot(gens, [e["mean_fitness"] for e in history], marker="s", ms=3, label="mean of generation")
        ax_fit.plot(gens, [e["best_so_far"] for e in history], color="k", lw=1, label="best so far")
        ax_fit.axhline(start[trait], color="grey", ls="--", lw=1, label="start (extracted, in basis)")
        ax_fit.set_xlabel("CMA-ES generation")
        ax_fit.set_ylabel("fitness: mean judge trait score\n(0-100; incoherent answers count 0)")
        ax_fit.set_title(f"{trait}: fitness on training questions", fontsize=9)
        ax_fit.grid(alpha=0.3)
        ax_fit.legend(fontsize=7)
        computed = [(e["judge"] or {}).get("computed", 0) for e in history]
        cached = [(e["judge"] or {}).get("cache_hits", 0) for e in history]
        ax_calls.bar(gens, computed, color="tab:red", label="judged (backend calls)")
        ax_calls.bar(gens, cached, bottom=computed, color="tab:gray", label="answered by the cache")
        ax_calls.set_xlabel("CMA-ES generation")
        ax_calls.set_ylabel("judgements per generation (count)")
        ax_calls.set_title(f"{trait}: judge calls", fontsize=9)
        ax_calls.grid(alpha=0.3, axis="y")
        ax_calls.legend(fontsize=7)
        for ax in (ax_fit, ax_calls):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def transfer_heatmap(result: dict) -> Figure:
    """ROC-AUC of every trait and surface baseline (rows) on every labelled set (columns), one
    panel per pool; a trait's cell is starred where its AUC beats every baseline (paired CI > 0)."""
    pools, sets = result["pools"], list(result["sets"])
    base_names = list(next(iter(result["sets"].values()))["baselines"])
    rows = [*result["traits"], *(f"baseline: {b}" for b in base_names)]
    fig, axes = _figure(len(pools), (3 + 1.6 * len(sets) * len(pools), 2.4 + 0.45 * len(rows)))
    for ax, pool in zip(axes[0], pools):
        values = np.array(
            [[result["sets"][s]["pools"][pool][t]["auc"]["auc"] for s in sets] for t in result["traits"]]
            + [[result["sets"][s]["baselines"][b]["auc"] for s in sets] for b in base_names]
        )
        stars = [
            ["*" if result["sets"][s]["pools"][pool][t]["beats_baselines"] else "" for s in sets]
            for t in result["traits"]
        ] + [[""] * len(sets) for _ in base_names]
        labels = np.array(
            [[f"{v:.2f}{star}" for v, star in zip(vals, marks)] for vals, marks in zip(values, stars)]
        )
        sns.heatmap(
            pd.DataFrame(values, index=rows, columns=sets),
            ax=ax,
            vmin=0,
            vmax=1,
            center=0.5,
            cmap="RdBu_r",
            annot=labels,
            fmt="",
            cbar=ax is axes[0, -1],
            cbar_kws={"label": "ROC-AUC, harmful vs length-matched harmless"},
        )
        ax.set_title(f"pool: {pool}")
        ax.tick_params(axis="x", rotation=30)
        ax.set_xlabel("harmful prompt set (vs its length-matched harmless controls)")
        if ax is not axes[0, 0]:
            ax.set_yticklabels([])
    fig.suptitle("Transfer: trait projections (chosen layer) and surface baselines; * beats every baseline")
    return fig
