"""Steering-vector optimisation: how far are extracted vectors from vectors optimised for behaviour?

Per trait, CMA-ES (pycma) searches steering directions at the trait's chosen layer inside a
PCA basis of the trait set's activations there (extraction split, both instructions, the
extraction position), starting at the mean-difference vector's coordinates in that basis.
A candidate's fitness is the mean LLM-judge trait score of the answers the model gives to a
few training questions (the trait's first extraction questions, asked with no system
prompt) while the candidate, scaled to a fixed steering norm, is added to the residual
stream. With a `coherence_floor`, an answer counts 0 unless the judge also rates it coherent at
or above it (or cannot score it), so gibberish cannot win where the judge can read coherence;
the criteria then call the optimised vector's cosine not measurable, since no truth set checks
that judge's coherence (null: no gate, the trait score alone). Generation uses fixed
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

The package is the experiment's plug-in face: the paths, targets, config check and rule inputs
the workflow and the registry read, and the `traitscope cmaes-*` commands. The work is in its
modules: settings (OptimisationSettings), steering (PCA basis, steered answers, judged and gated
scores), cmaes (the resumable search), optimise (cmaes-optimise), heldout (cmaes-heldout) and
report (cmaes-report, the gain over mean_diff).
"""

from __future__ import annotations

from traitscope.config import require_judge_models, require_traits
from traitscope.data.traits import contrast_pool, trait_path
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import Section, among_targets
from traitscope.experiments.steering_optimisation.cmaes import run_cmaes  # noqa: F401  (re-exported)
from traitscope.experiments.steering_optimisation.criteria import CMAES_GAIN_MIN, COSINE_RANGE, cmaes_criteria
from traitscope.experiments.steering_optimisation.heldout import (  # noqa: F401  (re-exported)
    Scorers,
    cmaes_heldout,
    read_optimised,
)
from traitscope.experiments.steering_optimisation.optimise import cmaes_optimise
from traitscope.experiments.steering_optimisation.report import cmaes_report, gain_vs_mean_diff  # noqa: F401  (re-exported)
from traitscope.experiments.steering_optimisation.settings import OptimisationSettings
from traitscope.experiments.steering_optimisation.steering import gated_scores, pca_basis  # noqa: F401  (re-exported)
from traitscope.judge import add_judge_arguments, judge_from_args, judge_from_json
from traitscope.paths import capture_path, trait_dir
from traitscope.settings import add_settings_argument

OUT_DIR = "results/cmaes"
CONDITIONS = ("none", "mean_diff", "probe", "optimised")


# --------------------------------------------------------------------------- plug-in interface


def targets(section: dict) -> list[str]:
    return [f"{OUT_DIR}/extraction_gap.json", f"{OUT_DIR}/optimization_curves.png"]


def check_config(section: dict, config: dict) -> None:
    where = "experiments.steering_optimisation"
    require_traits(f"{where}.traits", section["traits"], config)
    if not section["traits"]:
        raise TraitscopeError(f"{where}.traits: name at least one trait")
    contrast = [
        t for t in section["traits"] if contrast_pool(trait_path(config["traits_dir"], t)) is not None
    ]
    if contrast:
        raise TraitscopeError(
            f"{where}.traits: {', '.join(contrast)} is a prompt-contrast trait, which has no judge rubric "
            "to score steered answers by; name a persona trait"
        )
    if section["popsize"] < 2:
        raise TraitscopeError(f"{where}.popsize: CMA-ES needs at least 2 candidates per generation")
    fitness, heldout = config.get("judge", {}), section.get("heldout_judge")
    if heldout is not None:
        require_judge_models(f"{where}.heldout_judge", heldout, config)
    if section.get("enabled", True) and fitness.get("backend") == "classifier":
        # a classifier is the scorer easiest to game: the held-out check must read another one
        if heldout is None or _scorer(heldout) == _scorer(fitness):
            raise TraitscopeError(
                f"{where}.heldout_judge: judge.backend classifier scores the fitness, so the held-out "
                "check needs a different scorer (another features or reader, or an LLM backend), or a "
                "vector that games the classifier cannot show; set heldout_judge, e.g. "
                "{backend: classifier, classifier: {features: tfidf}}"
            )


def _scorer(judge: dict) -> tuple:
    """What scores a trait rubric: the backend and, for a classifier, its features and reader."""
    clf = judge.get("classifier", {})
    if judge.get("backend") == "classifier":
        return (
            "classifier",
            clf.get("features"),
            clf.get("reader") if clf.get("features") == "embedding" else None,
        )
    return (judge.get("backend"), judge.get("local", {}).get("variant"), judge.get("openai", {}).get("model"))


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
        add_settings_argument(p, OptimisationSettings)
        p.add_argument("--out", required=True, help="JSON result")
        if name == "cmaes-optimise":
            p.add_argument("--capture", required=True, help="the trait set's capture.json (PCA basis)")
            p.add_argument("--prompts", required=True, help="the trait prompt set")
            p.add_argument("--out-dir", required=True, help="folder of the optimised layer<L>.safetensors")
            p.add_argument("--state", required=True, help="the resumable CMA-ES state file")
        else:
            p.add_argument("--optimised", required=True, help="the optimised vector's folder")
            p.add_argument(
                "--heldout-judge",
                default=None,
                help="the held-out scorer (a judge: section, JSON); none: --judge's",
            )
            p.add_argument(
                "--heldout-judge-model", default="none", help="its local judge's manifest, else none"
            )
            p.add_argument(
                "--truth",
                default=None,
                help="the trait's truth set: the held-out scorer's agreement",
            )

    p = add("cmaes-report", _report_cli, "steering optimisation: extraction_gap.json and curves")
    p.add_argument("--traits", nargs="+", required=True)
    p.add_argument("--optimisations", nargs="+", required=True)
    p.add_argument("--heldouts", nargs="+", required=True)
    p.add_argument("--agreements", nargs="+", required=True, help="each trait's judge_agreement.json")
    p.add_argument(
        "--truth-agreements",
        nargs="*",
        default=[],
        metavar="TRAIT=JSON",
        help="judge_truth_agreement.json of the traits with a truth set (the judge gate reads it)",
    )
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
            a.settings,
            a.out_dir,
            a.out,
            a.state,
        )
    finally:
        judge.close()


def _heldout_cli(a) -> None:
    judge = judge_from_args(a)
    heldout = None
    if a.heldout_judge not in (None, "none"):
        model = None if a.heldout_judge_model == "none" else a.heldout_judge_model
        heldout = judge_from_json(a.heldout_judge, model)
    try:
        cmaes_heldout(
            a.model,
            a.vectors,
            a.evaluation,
            a.optimised,
            a.trait_file,
            Scorers(judge, heldout, None if a.truth in (None, "none") else a.truth),
            a.settings,
            a.out,
        )
    finally:
        judge.close()
        if heldout is not None:
            heldout.close()


def _report_cli(a) -> None:
    bad = [item for item in a.truth_agreements if "=" not in item]
    if bad:
        raise TraitscopeError(
            f"--truth-agreements: {bad[0]!r} is not TRAIT=JSON; pass TRAIT=path/judge_truth_agreement.json"
        )
    truth = dict(item.split("=", 1) for item in a.truth_agreements)
    cmaes_report(a.traits, a.optimisations, a.heldouts, a.agreements, a.out, a.png, truth)


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = Section(
    "Steering optimisation (CMA-ES)",
    (f"steering delta > {1 + CMAES_GAIN_MIN:.1f} x mean_diff's", f"cosine in {list(COSINE_RANGE)}"),
    order=50,
)


def result_files(section: dict) -> dict[str, str]:
    """The result files the summary reads, among the enabled section's targets."""
    return among_targets(targets(section), {"gap": "extraction_gap.json"})


def criteria(results: dict) -> list:
    """This experiment's rows of the summary table."""
    return cmaes_criteria(results["gap"])
