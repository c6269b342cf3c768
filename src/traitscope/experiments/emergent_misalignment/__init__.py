"""Emergent misalignment: do trait projections rise in a misaligned finetune on benign prompts?

Three variants answer the same benign questions (the EM evaluation YAMLs, filtered), with
seeded sampling and several samples per question: the base model, a misaligned finetune and
a control finetune trained the same way on matched benign data. A finetune moves every
activation a little, so the misaligned shift is read against the control's: misaligned vs
base, control vs base, and misaligned vs control (the misaligned shift beyond the control
shift). Each comparison is paired by (question, sample); trait vectors come from the base.

Without an insecure-code corpus, the embedded default builds the finetunes' data from the
base model's own answers to the trait data's extraction questions: under the trait's
positive instructions (misaligned) and its negative ones (control), stored without the
system prompt. That is persona distillation standing in for the insecure-code finetune.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from traitscope import plotting
from traitscope.capture.store import read_responses
from traitscope.config import require_prompt_set, require_traits, require_variant
from traitscope.data.prompts import read_prompt_set
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import CaptureRequest, Section, among_targets
from traitscope.experiments.emergent_misalignment.behaviour import add_behaviour_commands
from traitscope.experiments.emergent_misalignment.criteria import EM_ALPHA, EM_D_MIN, em_criteria
from traitscope.experiments.emergent_misalignment.design import COMPARISONS, ROLES
from traitscope.experiments.emergent_misalignment.draws import draw_comparisons
from traitscope.experiments.emergent_misalignment.settings import (
    EMAnalysisSettings,
    EMPromptSettings,
    EMTrainingSettings,
)
from traitscope.io import atomic_path, read_json, read_table, save_figure, write_json, write_parquet
from traitscope.paths import capture_path, projections_path, prompts_path, trait_dir
from traitscope.settings import add_settings_argument
from traitscope.stats import compare_paired, holm
from traitscope.vectors.projection_table import read_projections

OUT_DIR = "results/emergent_misalignment"
POSITIONS = ("response_mean", "last_prompt")


def training_data_paths() -> dict[str, str]:
    """The persona-distillation JSONL files the embedded default finetunes on."""
    return {side: f"{OUT_DIR}/train/{side}.jsonl" for side in ("misaligned", "control")}


def targets(section: dict) -> list[str]:
    """The files the experiment ends in (rule all asks for them when enabled)."""
    return [
        f"{OUT_DIR}/{name}"
        for name in ("variant_comparison.json", "figures/trait_distributions.png", "example_answers.md")
    ]


def capture_requests(section: dict) -> list[CaptureRequest]:
    """Every variant answers the derived question set."""
    return [
        CaptureRequest(tuple((section[role], section["prompt_set"]) for role in ROLES), section["capture"])
    ]


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.emergent_misalignment."""
    where = "experiments.emergent_misalignment"
    for role in ROLES:
        require_variant(f"{where}.{role}", section.get(role), config)
    if len({section[role] for role in ROLES}) != len(ROLES):
        raise TraitscopeError(f"{where}: base, misaligned and control must be three different variants")
    for name in section["question_sets"]:
        require_prompt_set(f"{where}.question_sets", name, config, dataset="emergent_misalignment")
    rubrics_from = section["behaviour"]["rubrics_from"]
    if rubrics_from is not None:
        require_prompt_set(
            f"{where}.behaviour.rubrics_from", rubrics_from, config, dataset="emergent_misalignment"
        )
    require_traits(f"{where}.traits", section["traits"], config)
    persona = section.get("persona")
    if persona:
        require_traits(f"{where}.persona.trait", [persona["trait"]], config)
    if section["prompt_set"] in config["prompt_sets"]:
        raise TraitscopeError(
            f"{where}.prompt_set {section['prompt_set']!r} is also under prompt_sets:; "
            "the experiment writes that set itself, so give it another name"
        )
    try:
        re.compile(section["exclude"])
    except re.error as exc:
        raise TraitscopeError(f"{where}.exclude: not a regular expression ({exc}); fix the pattern") from None


def benign_questions(tables: list[pd.DataFrame], exclude: str, samples: int) -> pd.DataFrame:
    """The EM questions whose id does not match `exclude`, each repeated `samples` times.

    Rows keep the question's own system prompt; `sample` tells the copies apart, and the
    same (question, sample) row is what pairs the variants' answers.
    """
    questions = pd.concat(tables, ignore_index=True)
    keep = questions[~questions["category"].str.contains(exclude, regex=True)]
    if keep.empty:
        raise TraitscopeError(
            f"experiments.emergent_misalignment.exclude {exclude!r} removes every question; loosen it"
        )
    rows = [
        {**r, "prompt_id": f"{r['prompt_id']}:s{j}", "question_id": r["prompt_id"], "sample": j}
        for r in keep.to_dict("records")
        for j in range(samples)
    ]
    return pd.DataFrame(rows)


def em_prompts(question_sets: list[str | Path], settings: EMPromptSettings, out: str | Path) -> pd.DataFrame:
    """Write the derived prompt set of benign questions from prepared EM prompt sets."""
    tables = [read_table(p, "prep-prompts", ("prompt_id", "category")) for p in question_sets]
    table = benign_questions(tables, settings.exclude, settings.samples_per_question)
    write_parquet(out, table)
    return table


def persona_training_data(
    trait_prompts: str | Path,
    trait_capture: str | Path,
    avoid: list[str | Path],
    out_misaligned: str | Path,
    out_control: str | Path,
    settings: EMTrainingSettings,
) -> dict[str, int]:
    """Chat JSONL from the base model's own answers to the trait's extraction questions.

    Positive-instruction answers make the misaligned set, negative ones the control set; the
    system prompt is dropped, so a finetune must internalise the persona. Questions that also
    occur in the evaluation sets (`avoid`) are left out, as are empty answers.
    `settings.pairs_per_question` keeps every question's n lowest-numbered instruction pairs: both sets
    still cover every question, with the same pairs, at a fraction of the training cost.
    """
    pairs_per_question = settings.pairs_per_question
    needed = ("split", "label", "question") + (("pair_index",) if pairs_per_question is not None else ())
    table = read_prompt_set(trait_prompts, needed)
    responses = read_responses(trait_capture)
    held_out = {q for p in avoid for q in read_table(p, "prep-prompts", ("prompt",))["prompt"]}
    rows = table[(table["split"] == "extraction") & ~table["question"].isin(held_out)]
    if pairs_per_question is not None:  # pair_index numbers instructions, not a question's pairs
        rank = rows.groupby("question")["pair_index"].rank(method="dense")
        rows = rows[rank <= pairs_per_question]
    if rows.empty:
        raise TraitscopeError(
            f"{trait_prompts}: every extraction question is in the --avoid sets; nothing is left to train on"
        )
    if not rows["prompt_id"].isin(list(responses)).any():  # not "recapture with answers": another set's
        raise TraitscopeError(
            f"{trait_capture} holds no answer to {trait_prompts}'s prompts; pass that trait set's own capture"
        )
    sets = {}
    for side, label in (("misaligned", 1), ("control", 0)):
        sets[side] = [
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": r.question},
                        {"role": "assistant", "content": responses[r.prompt_id].strip()},
                    ]
                },
                ensure_ascii=False,
            )
            for r in rows[rows["label"] == label].itertuples()
            if responses.get(r.prompt_id, "").strip()
        ]
        if not sets[side]:
            raise TraitscopeError(
                f"{trait_capture}: no non-empty {side} answers on extraction questions; "
                "recapture the trait set with max_new_tokens > 0"
            )
    for side, out in (("misaligned", out_misaligned), ("control", out_control)):
        with atomic_path(out) as tmp:
            Path(tmp).write_text("\n".join(sets[side]) + "\n")
    counts = {side: len(lines) for side, lines in sets.items()}
    return counts


def paired_scores(projections: dict[str, str | Path], traits: list[str]) -> pd.DataFrame:
    """Pooled scores at each trait's chosen layer: one row per (prompt, trait, position),
    one column per variant, only prompts every variant answered."""
    parts = []
    for role, path in projections.items():
        table = read_projections(path, chosen=True, pooled=True)
        missing = sorted(set(traits) - set(table["trait"]))
        if missing:
            raise TraitscopeError(f"{path}: no projections for trait(s) {', '.join(missing)}; rerun project")
        table = table[table["chosen_layer"] & (table["token_index"] == -1) & table["trait"].isin(traits)]
        table = table[table["position"].isin(POSITIONS)]
        parts.append(table.set_index(["prompt_id", "trait", "position"])["score"].rename(role))
    return pd.concat(parts, axis=1, join="inner").reset_index()


def compare_variants(scores: pd.DataFrame, traits: list[str], n_boot: int, seed: int) -> dict:
    """Every paired comparison per position and trait, Holm across traits within each; a
    question's samples form one cluster (its CI resamples questions, its test their means)."""
    result: dict[str, dict] = {}
    for name, (a, b) in COMPARISONS.items():
        result[name] = {}
        for position in POSITIONS:
            at = scores[scores["position"] == position]
            entries = {}
            for trait in traits:
                rows = at[at["trait"] == trait]
                entries[trait] = compare_paired(
                    rows[a], rows[b], n_boot=n_boot, seed=seed, clusters=rows["question_id"]
                )
            for trait, p in zip(traits, holm([entries[t]["p_value"] for t in traits])):
                entries[trait]["p_holm"] = p
            result[name][position] = entries
    return result


def _example_answers(prompts: pd.DataFrame, answers: dict[str, dict[str, str]], per_question: int = 1) -> str:
    """Markdown: each benign question with every variant's answer(s), side by side."""
    lines = ["# Example answers (first sample of each question)", ""]
    for r in prompts[prompts["sample"] < per_question].itertuples():
        lines += [f"## {r.question_id}", "", f"> {r.prompt.strip()}", ""]
        for role, by_id in answers.items():
            text = by_id.get(r.prompt_id, "").strip().replace("\n", " ")
            lines += [f"- **{role}**: {text}"]
        lines.append("")
    return "\n".join(lines)


def em_analysis(
    prompts_path_: str | Path,
    projections: dict[str, str | Path],
    captures_: dict[str, str | Path],
    variants: dict[str, str],
    out_json: str | Path,
    distributions_png: str | Path,
    examples_md: str | Path,
    settings: EMAnalysisSettings,
    behaviour: str | Path | None = None,
    draws: list[str | Path] | None = None,
) -> dict:
    """variant_comparison.json, the distribution figure and the example answers; with
    `behaviour` (em_behaviour's JSON), the judged behaviour goes into the comparison too.
    With `draws` (each trait's vector draws, in the traits' order; the pipeline always passes
    them), every comparison also gets a d_z CI that covers the vector's estimation error
    (`over_vector_draws`)."""
    traits, n_boot, seed = list(settings.traits), settings.n_boot, settings.seed
    prompts = read_prompt_set(prompts_path_, ("question_id",))
    scores = paired_scores(projections, traits).merge(prompts[["prompt_id", "question_id"]], on="prompt_id")
    if scores.empty:
        raise TraitscopeError(
            f"{', '.join(map(str, projections.values()))}: no prompt scored by every variant"
        )
    answers = {role: read_responses(path) for role, path in captures_.items()}
    lengths = {
        role: float(pd.Series([len(t.split()) for t in by_id.values()]).mean())
        for role, by_id in answers.items()
    }
    result = {
        "variants": variants,
        "n_questions": int(prompts["question_id"].nunique()),
        "n_samples_per_question": int(prompts["sample"].max() + 1),
        "n_pairs": int(scores["prompt_id"].nunique()),
        "positions": {
            "response_mean": "mean over each variant's own generated tokens (tokens differ between variants)",
            "last_prompt": "last prompt token (identical tokens in every variant)",
        },
        "comparisons": compare_variants(scores, traits, n_boot, seed),
        "over_vector_draws": "d_z CI whose replicates each resample the questions and score them on one "
        "refit of the trait vector (its extraction questions resampled): it covers the vector's "
        "estimation error, which the questions-only CI holds fixed",
        "design": {
            name: {"a": a, "b": b, "paired_by": "question and sample", "clustered_by": "question"}
            for name, (a, b) in COMPARISONS.items()
        },
        "correction": "Holm across traits, within each comparison and position",
        "mean_response_words": lengths,
        "vectors_from": "base variant, each trait at its chosen layer",
    }
    draws = draws or []
    if draws and len(draws) != len(traits):
        raise TraitscopeError(f"--draws: {len(draws)} file(s) for {len(traits)} trait(s); one per trait")
    over = draw_comparisons(captures_, dict(zip(traits, draws)), prompts, POSITIONS, seed)
    for name, by_position in over.items():
        for position, by_trait in by_position.items():
            for trait, ci in by_trait.items():
                result["comparisons"][name][position][trait]["over_vector_draws"] = ci
    if behaviour is not None:
        result["behaviour"] = read_json(behaviour, "em-behaviour", ("misaligned", "judge"))
    save_figure(
        distributions_png, plotting.variant_distribution_figure(scores, traits, list(ROLES), POSITIONS)
    )
    with atomic_path(examples_md) as tmp:
        Path(tmp).write_text(_example_answers(prompts, answers))
    write_json(out_json, result)  # last: its presence means every output was written
    return result


def analysis_inputs(section: dict) -> dict[str, str]:
    """The analysis rule's inputs, named by role (Snakemake input names)."""
    out = {"prompts": prompts_path(section["prompt_set"])}
    for role in ROLES:
        out[f"projections_{role}"] = projections_path(section[role], section["prompt_set"])
        out[f"capture_{role}"] = capture_path(section[role], section["prompt_set"])
    out["draws"] = [f"{trait_dir(section['base'], t)}/draws.safetensors" for t in section["traits"]]
    if section["behaviour"]["enabled"]:
        out["behaviour"] = behaviour_path()
    return out


def behaviour_path() -> str:
    return f"{OUT_DIR}/behaviour.json"


def judged_paths(role: str) -> dict[str, str]:
    """One variant's judged answers (Parquet) and what judging them cost (JSON)."""
    return {"table": f"{OUT_DIR}/behaviour/{role}.parquet", "json": f"{OUT_DIR}/behaviour/{role}.json"}


def add_commands(add) -> None:
    add_behaviour_commands(add)
    """`traitscope em-prompts`, `traitscope em-training-data` and `traitscope em-analysis`."""
    p = add("em-prompts", _prompts_cli, "emergent misalignment: the benign question set")
    p.add_argument("--question-sets", nargs="+", required=True, help="prepared EM prompt sets")
    add_settings_argument(p, EMPromptSettings)
    p.add_argument("--out", required=True)

    p = add("em-training-data", _training_cli, "emergent misalignment: persona-distillation JSONL")
    p.add_argument("--trait-prompts", required=True, help="the persona trait's prompt set")
    p.add_argument("--trait-capture", required=True, help="the base model's capture of it")
    p.add_argument("--avoid", nargs="+", required=True, help="prompt sets whose questions to leave out")
    p.add_argument("--misaligned", required=True)
    p.add_argument("--control", required=True)
    add_settings_argument(p, EMTrainingSettings)

    p = add("em-analysis", _analysis_cli, "emergent misalignment: paired variant comparison")
    p.add_argument("--prompts", required=True)
    for role in ROLES:
        p.add_argument(f"--{role}", required=True, help=f"the {role} variant's name")
        p.add_argument(f"--projections-{role}", required=True)
        p.add_argument(f"--capture-{role}", required=True)
    p.add_argument("--out", required=True, help="variant_comparison.json")
    p.add_argument("--distributions-png", required=True)
    p.add_argument("--examples-md", required=True)
    p.add_argument(
        "--draws", nargs="+", required=True, help="each trait's draws.safetensors, in the traits' order"
    )
    add_settings_argument(p, EMAnalysisSettings)
    p.add_argument(
        "--behaviour",
        type=lambda v: None if v == "none" else v,
        default=None,
        help="em-behaviour's JSON, to include (default or none: no behaviour)",
    )


def _prompts_cli(a) -> None:
    em_prompts(a.question_sets, a.settings, a.out)


def _training_cli(a) -> None:
    persona_training_data(a.trait_prompts, a.trait_capture, a.avoid, a.misaligned, a.control, a.settings)


def _analysis_cli(a) -> None:
    em_analysis(
        a.prompts,
        {r: getattr(a, f"projections_{r}") for r in ROLES},
        {r: getattr(a, f"capture_{r}") for r in ROLES},
        {r: getattr(a, r) for r in ROLES},
        a.out,
        a.distributions_png,
        a.examples_md,
        a.settings,
        a.behaviour,
        a.draws,
    )


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = Section(
    "Emergent misalignment",
    (f">= 1 trait elevated (Holm p < {EM_ALPHA})", f"d_z > {EM_D_MIN} on a safety trait"),
    order=30,
)


def result_files(section: dict) -> dict[str, str]:
    """The result files the summary reads, among the enabled section's targets."""
    return among_targets(targets(section), {"comparison": "variant_comparison.json"})


def criteria(results: dict) -> list:
    """This experiment's rows of the summary table."""
    return em_criteria(results["comparison"])
