"""Transfer table: every trait vector scored on every labelled prompt set, beside surface baselines.

A vector generalises if it separates harmful from harmless prompts on sets it was not built
from, better than the prompt's surface does. Per (harmful set, length-matched harmless set):
ROC-AUC of prompt length and of a bag-of-words classifier (`traitscope.baselines`), and per
trait and pool the projection's AUC at the chosen layer with a stratified bootstrap CI and
its difference to each baseline with a paired bootstrap CI. A prompt-contrast trait stands
beside the bag of words fitted on its own extraction rows (the rows its vector saw); persona
traits beside the configured one's. Per category of the harmful side, the same AUCs against
the harmless rows of that category (paired sets such as the hard negatives) or else all of
them. Scoring a row any vector or bag of words was fitted on is an error. Outputs:
results/traits/<variant>/transfer.json and transfer.png (a heatmap of AUCs, one panel per pool).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from traitscope import baselines
from traitscope.command_args import add_own_bow_argument
from traitscope.config import (
    require_captured,
    require_contrast_trait,
    require_distinct_sets,
    require_prompt_set,
    require_traits,
    require_variant,
)
from traitscope.data.prompts import read_prompt_set, require_side, user_texts
from traitscope.data.traits import contrast_pool, trait_path
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import CaptureRequest
from traitscope.experiments.transfer.figures import transfer_heatmap
from traitscope.experiments.transfer.settings import TransferSettings
from traitscope.io import save_figure, write_json
from traitscope.paths import projections_path, prompts_path, trait_dir
from traitscope.settings import add_settings_argument
from traitscope.vectors.projection_table import chosen_scores, read_projections


def out_dir(section: dict) -> str:
    return f"results/traits/{section['variant']}"


def targets(section: dict) -> list[str]:
    return [f"{out_dir(section)}/transfer.json", f"{out_dir(section)}/transfer.png"]


def traits(section: dict, config: dict) -> list[str]:
    """The configured traits, or every trait when the list is empty."""
    return section["traits"] or list(config["traits"])


def contrast_traits(section: dict, config: dict) -> list[str]:
    """The scored prompt-contrast traits: each stands beside a bag of words fitted on its own rows."""
    return [t for t in traits(section, config) if contrast_pool(trait_path(config["traits_dir"], t))]


def capture_requests(section: dict) -> list[CaptureRequest]:
    """Each harmful set and its controls, projected at their own capture settings."""
    return [CaptureRequest(tuple((section["variant"], s) for pair in section["sets"].items() for s in pair))]


def analysis_inputs(section: dict, config: dict) -> dict[str, list[str] | str]:
    """Named inputs of the rule: projections and prompts per set, each trait's vectors metadata
    (its training rows), the prompt set the default bag of words is fitted on and each
    prompt-contrast trait's own (`own_bow`)."""
    variant, base = section["variant"], config["base_model"]
    sets = [s for pair in section["sets"].items() for s in pair]
    return {
        "projections": [projections_path(variant, s) for s in sets],
        "prompts": [prompts_path(s) for s in sets],
        "meta": [f"{trait_dir(base, t)}/vectors.json" for t in traits(section, config)],
        "bow": prompts_path(f"traits/{section['bag_of_words']}"),
        "own_bow": [prompts_path(f"traits/{t}") for t in contrast_traits(section, config)],
    }


def analysis_args(section: dict, config: dict, inputs: dict) -> str:
    """`--set` per harmful set (its and its controls' projections and prompts), `--trait` per trait,
    `--own-bag-of-words` per prompt-contrast trait."""
    proj, prompts = list(inputs["projections"]), list(inputs["prompts"])
    args = [
        f"--set {name} {proj[2 * i]} {prompts[2 * i]} {proj[2 * i + 1]} {prompts[2 * i + 1]}"
        for i, name in enumerate(section["sets"])
    ]
    args += [f"--trait {t} {m}" for t, m in zip(traits(section, config), inputs["meta"])]
    own = zip(contrast_traits(section, config), inputs["own_bow"])
    args += [f"--own-bag-of-words {t} {p}" for t, p in own]
    return " ".join(args)


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.transfer."""
    where = "experiments.transfer"
    require_variant(f"{where}.variant", section.get("variant"), config)
    require_traits(f"{where}.traits", section["traits"], config)
    if not section["sets"]:
        raise TraitscopeError(f"{where}.sets: name at least one harmful set and its harmless controls")
    for harmful, harmless in section["sets"].items():
        require_prompt_set(f"{where}.sets", harmful, config)
        require_prompt_set(f"{where}.sets.{harmful}", harmless, config)
        require_distinct_sets(f"{where}.sets.{harmful}", harmful, harmless)
        for name in (harmful, harmless):
            require_captured(f"{where}.pools", section["pools"], name, config)
    require_contrast_trait(f"{where}.bag_of_words", section["bag_of_words"], config)


def _side(projections: str | Path, prompts: str | Path, names: list[str], pool: str, harmful: bool) -> tuple:
    """(scores prompt_id x trait, texts, categories) of one side, rows in the same order."""
    scores = chosen_scores(read_projections(projections, chosen=True, pooled=True), pool, names)
    table = read_prompt_set(prompts)
    require_side(prompts, table, harmful)
    table = table.set_index("prompt_id")
    missing = scores.index.difference(table.index)
    if len(missing):
        raise TraitscopeError(f"{projections}: prompt {missing[0]!r} is not in {prompts}; rerun project")
    rows = table.loc[scores.index]
    categories = rows["category"] if "category" in rows.columns else pd.Series(None, index=rows.index)
    return scores, user_texts(rows.reset_index()), categories.to_numpy(dtype=object)


def transfer_table(
    sets: list[tuple[str, str, str, str, str]],
    trait_meta: list[tuple[str, str]],
    bow_prompts: str | Path,
    out_json: str | Path,
    out_png: str | Path,
    settings: TransferSettings,
    own_bow: dict[str, str | Path] | None = None,
) -> dict:
    """Score every trait on every set; write the JSON and the heatmap.

    `sets`: (name, harmful projections, harmful prompts, harmless projections, harmless
    prompts); `trait_meta`: (trait, vectors.json) for each trait; `own_bow`: a prompt-contrast
    trait's own trait prompt set, whose extraction rows fit the bag of words it stands beside.
    """
    pools, n_boot, seed = list(settings.pools), settings.n_boot, settings.seed
    names = [t for t, _ in trait_meta]
    bow_of, bows, bow_training = baselines.bags_of_words(bow_prompts, own_bow or {}, names, seed)
    training = {t: baselines.training_keys(m) for t, m in trait_meta} | bow_training
    result: dict = {
        "pools": pools,
        "traits": names,
        "bag_of_words_fitted_on": str(bow_prompts),
        "bag_of_words_of": bow_of,
        "sets": {},
    }
    for name, hp, hq, sp, sq in sets:
        entry: dict = {"harmful": str(hq), "harmless": str(sq), "pools": {}, "by_category": {}}
        for pool in pools:
            bad, bad_texts, bad_cats = _side(hp, hq, names, pool, harmful=True)
            good, good_texts, good_cats = _side(sp, sq, names, pool, harmful=False)
            baselines.check_unseen(training, {name: bad_texts + good_texts})
            base = baselines.baseline_scores(bad_texts, good_texts, bows)
            entry["n_harmful"], entry["n_harmless"] = len(bad), len(good)
            entry["baselines"] = baselines.baseline_aucs(base, n_boot, seed)
            entry["pools"][pool] = {
                t: baselines.against_baselines(
                    bad[t].to_numpy(),
                    good[t].to_numpy(),
                    baselines.trait_baselines(base, bow_of.get(t)),
                    n_boot=n_boot,
                    seed=seed,
                )
                for t in names
            }
            entry["by_category"][pool] = baselines.by_category(
                bad, good, (bad_cats, good_cats), base, n_boot, seed
            )
        result["sets"][name] = entry
    result["summary"] = {
        t: {
            pool: [s for s, e in result["sets"].items() if e["pools"][pool][t]["beats_baselines"]]
            for pool in pools
        }
        for t in names
    }
    save_figure(out_png, transfer_heatmap(result))
    write_json(out_json, result)  # last: its presence means every output was written
    return result


def add_commands(add) -> None:
    """`traitscope transfer-table`."""
    p = add("transfer-table", _cli, "every trait on every labelled prompt set, beside surface baselines")
    p.add_argument(
        "--set",
        nargs=5,
        action="append",
        required=True,
        dest="sets",
        metavar=("NAME", "HARMFUL_PROJ", "HARMFUL_PROMPTS", "HARMLESS_PROJ", "HARMLESS_PROMPTS"),
        help="a harmful set and its length-matched harmless controls (repeat)",
    )
    p.add_argument(
        "--trait", nargs=2, action="append", required=True, metavar=("NAME", "VECTORS_JSON"), dest="traits"
    )
    p.add_argument("--bag-of-words", required=True, help="trait prompt set whose extraction rows fit it")
    add_own_bow_argument(p)
    p.add_argument("--out", required=True, help="transfer.json")
    p.add_argument("--png", required=True, help="transfer.png")
    add_settings_argument(p, TransferSettings)


def _cli(a) -> None:
    transfer_table(
        [tuple(s) for s in a.sets],
        [tuple(t) for t in a.traits],
        a.bag_of_words,
        a.out,
        a.png,
        a.settings,
        dict(a.own_bow),
    )


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = None  # no criteria of its own in the summary table


def result_files(section: dict) -> dict[str, str]:
    return {}


def criteria(results: dict) -> list:
    return []
