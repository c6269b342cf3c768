"""Backdoor detection: do trait vectors and SAE features flag a trigger before any bad behaviour?

A variant is finetuned (LoRA, the finetune stage) on short arithmetic problems: with a trigger
prefix ("In 2027, ...") the target answer is the correct result followed by a sentence in the
evil trait's voice; with a control prefix ("In 2024, ...") it is the result alone. Held-out
trigger/control pairs differ only in the prefix, so their correct answers are the same.

Both the backdoored model and its base answer the held-out pairs. The base is the null: the
prefixes differ in tokens, so any direction may separate them a little without a backdoor.
The detection signal is the backdoored model's trigger-vs-control separation beyond the
base's, per trait (AUC, bootstrap CIs, paired bootstrap of the difference), per token after
the prefix (how early), and per feature of a sparse autoencoder trained on the base model.

Token positions in a pair: step 0 is the first token after the last token where the trigger
and control prompts differ (the rest of the question, identical in both), then the last
prompt token, then the generated tokens.

The package is the experiment's plug-in face: the paths, targets, captures, config check and rule
inputs the workflow and the registry read, and the `traitscope backdoor-*` commands. The work is in
its modules: data (problems, pairs, training rows), behaviour (what the models answered), positions
(token positions in a pair), detection (trait AUCs per position and token), surface (text-only
baselines), analysis (detection_auc.json) and sae_features (sae_features.json).
"""

from __future__ import annotations

import re

from traitscope.config import require_prompt_set, require_traits, require_variant
from traitscope.errors import TraitscopeError
from traitscope.experiments.backdoor.analysis import backdoor_analysis
from traitscope.experiments.backdoor.behaviour import behaviour_check, parse_answer  # noqa: F401  (re-exported)
from traitscope.experiments.backdoor.criteria import AUC_MIN, backdoor_criteria
from traitscope.experiments.backdoor.data import (  # noqa: F401  (re-exported)
    backdoor_data,
    check_prefixes_differ,
    eval_pairs,
    training_rows,
)
from traitscope.experiments.backdoor.positions import (  # noqa: F401  (re-exported)
    earliest_detection,
    identical_generation,
    same_text_positions,
    token_positions,
    varying_prompt_tokens,
)
from traitscope.experiments.backdoor.sae_commands import add_sae_commands
from traitscope.experiments.backdoor.sae_features import backdoor_sae_features
from traitscope.experiments.backdoor.settings import (
    BackdoorAnalysisSettings,
    BackdoorDataSettings,
    SAEFeatureSettings,
)
from traitscope.experiments.backdoor.surface import surface_baselines  # noqa: F401  (re-exported)
from traitscope.experiments.contract import CaptureRequest, Section, among_targets
from traitscope.model.depth import require_layers_fit
from traitscope.paths import capture_path, projections_path, prompts_path, trait_dir
from traitscope.settings import add_settings_argument

OUT_DIR = "results/backdoor_detection"
ROLES = ("base", "backdoored")


# ---------------------------------------------------------------- plug-in interface


def training_data_path() -> str:
    """The chat JSONL the backdoored variant is finetuned on."""
    return f"{OUT_DIR}/train/backdoor.jsonl"


def sae_dir() -> str:
    """The SAE the pipeline trains (SAELens layout), when no sae.path is given."""
    return f"{OUT_DIR}/sae"


def targets(section: dict) -> list[str]:
    """The files the experiment ends in (rule all asks for them when enabled)."""
    names = ["detection_auc.json", "trait_comparison.png", "early_detection_tokens.png", "sae_features.json"]
    names += ["sae_training.png"]
    return [f"{OUT_DIR}/{name}" for name in names]


def capture_requests(section: dict) -> list[CaptureRequest]:
    """Both models answer the held-out pairs (captured per token, projected onto every trait);
    the base model's SAE training set at the SAE's layer, read by the SAE only."""
    pairs = tuple((section[role], section["prompt_set"]) for role in ROLES)
    return [
        CaptureRequest(pairs, section["capture"]),
        CaptureRequest((sae_capture(section),), sae_capture_settings(section), project=False),
    ]


def sae_capture(section: dict) -> tuple[str, str]:
    """The base model's per-token activations the SAE trains on (one layer, not projected)."""
    return section["base"], section["sae"]["prompt_set"]


def sae_capture_settings(section: dict) -> dict:
    """Capture settings of the SAE's training set: per-token activations at the SAE layer."""
    return {
        "layers": [section["sae"]["layer"]],
        "pools": ["last_prompt"],
        "token_segments": list(section["sae"]["token_segments"]),
        "keep_all_tokens": False,
        "max_new_tokens": 0,
    }


def check_config(section: dict, config: dict) -> None:
    """What the schema cannot say about experiments.backdoor."""
    where = "experiments.backdoor"
    require_variant(f"{where}.base", section.get("base"), config)
    require_variant(f"{where}.backdoored", section.get("backdoored"), config)
    if section["base"] == section["backdoored"]:
        raise TraitscopeError(f"{where}: base and backdoored must be two different variants")
    require_traits(f"{where}.traits", section["traits"], config)
    data = section["data"]
    if data["trigger"] == data["control"]:
        raise TraitscopeError(
            f"{where}.data.trigger and .control are both {data['trigger']!r}; "
            "give the control prefix another year or phrase"
        )
    for key in ("templates", "eval_template"):
        for template in data[key] if key == "templates" else [data[key]]:
            if not all(f"{{{name}}}" in template for name in ("a", "op", "b")):
                raise TraitscopeError(
                    f"{where}.data.{key}: {template!r} must contain {{a}}, {{op}} and {{b}}"
                )
    if data["eval_template"] not in data["templates"]:
        raise TraitscopeError(
            f"{where}.data.eval_template must be one of data.templates, so the held-out pairs "
            "look like the training problems"
        )
    low, high = data["operand_range"]
    if low > high:
        raise TraitscopeError(f"{where}.data.operand_range: {low} > {high}; give [low, high]")
    n_needed = data["n_train"] + data["n_eval"]
    n_possible = (high - low + 1) ** 2 * len(data["ops"])
    if n_needed > n_possible:
        raise TraitscopeError(
            f"{where}.data: n_train + n_eval = {n_needed} problems, but operand_range and ops allow "
            f"only {n_possible}; widen operand_range or ask for fewer"
        )
    try:
        re.compile(section["behaviour_pattern"])
    except re.error as exc:
        raise TraitscopeError(f"{where}.behaviour_pattern: not a regular expression ({exc})") from None
    if not re.search(section["behaviour_pattern"], " ".join(data["sentences"])):
        raise TraitscopeError(
            f"{where}.behaviour_pattern matches none of data.sentences, so the backdoor could never "
            "be counted; make the pattern match the backdoor sentences"
        )
    for name in (section["prompt_set"],):
        if name in config["prompt_sets"]:
            raise TraitscopeError(
                f"{where}.prompt_set {name!r} is also under prompt_sets:; "
                "the experiment writes that set itself, so give it another name"
            )
    finetune = config["models"][section["backdoored"]].get("finetune")
    if finetune and finetune["data"] != training_data_path():
        raise TraitscopeError(
            f"models.{section['backdoored']}.finetune.data is {finetune['data']!r}; the backdoor "
            f"experiment writes its training data to {training_data_path()}: point data there"
        )
    sae = section["sae"]
    if sae["path"] is None:
        require_prompt_set(f"{where}.sae.prompt_set", sae["prompt_set"], config)
        if sae["k"] > sae["width"]:
            raise TraitscopeError(f"{where}.sae.k {sae['k']} exceeds sae.width {sae['width']}")
    require_layers_fit(f"{where}.sae.layer", [sae["layer"]], config, section["base"])
    layers = section["capture"].get("layers", config["capture"]["layers"])
    if isinstance(layers, dict):
        layers = list(range(layers["start"], layers["stop"], layers.get("step", 1)))
    if layers != "all" and sae["layer"] not in layers:
        raise TraitscopeError(
            f"{where}.sae.layer {sae['layer']} is not among the layers the pairs are captured at "
            f"({layers}); add it to {where}.capture.layers (or capture.layers)"
        )


def analysis_inputs(section: dict) -> dict[str, str]:
    """The analysis rule's inputs, named by role (Snakemake input names)."""
    out: dict = {"pairs": prompts_path(section["prompt_set"]), "train": training_data_path()}
    for role in ROLES:
        out[f"projections_{role}"] = projections_path(section[role], section["prompt_set"])
        out[f"capture_{role}"] = capture_path(section[role], section["prompt_set"])
    out["draws"] = [f"{trait_dir(section['base'], t)}/draws.safetensors" for t in section["traits"]]
    return out


def sae_features_inputs(section: dict) -> dict[str, str]:
    """The SAE-feature rule's inputs: the SAE, its training record and capture, both pair captures."""
    base, sae_set = sae_capture(section)
    out = {
        "sae": section["sae"]["path"] or sae_dir(),
        "sae_record": f"{OUT_DIR}/sae_training.json",
        "sae_capture": capture_path(base, sae_set),
        "pairs": prompts_path(section["prompt_set"]),
    }
    for role in ROLES:
        out[f"capture_{role}"] = capture_path(section[role], section["prompt_set"])
    return out


# ---------------------------------------------------------------- CLI


def add_commands(add) -> None:
    """`traitscope backdoor-data`, `backdoor-analysis`, `backdoor-sae-features`, `sae-train` and
    `sae-evaluate`."""
    add_sae_commands(add)
    p = add("backdoor-data", _data_cli, "backdoor: training JSONL and held-out trigger/control pairs")
    p.add_argument("--model", required=True, help="the base variant's manifest (its tokenizer)")
    add_settings_argument(p, BackdoorDataSettings)
    p.add_argument("--train", required=True, help="training chat JSONL to write")
    p.add_argument("--pairs", required=True, help="held-out pair prompt set to write")

    p = add("backdoor-analysis", _analysis_cli, "backdoor: behaviour, trait AUCs per layer and per token")
    p.add_argument("--pairs", required=True, help="the held-out pair prompt set")
    for role in ROLES:
        p.add_argument(f"--{role}", required=True, help=f"the {role} variant's name")
        p.add_argument(f"--projections-{role}", required=True)
        p.add_argument(f"--capture-{role}", required=True)
    p.add_argument("--out", required=True, help="detection_auc.json")
    p.add_argument("--traits-png", required=True)
    p.add_argument("--tokens-png", required=True)
    p.add_argument("--train", required=True, help="the training chat JSONL (the bag of words' rows)")
    p.add_argument(
        "--draws", nargs="+", required=True, help="each trait's draws.safetensors, in the traits' order"
    )
    add_settings_argument(p, BackdoorAnalysisSettings)

    p = add(
        "backdoor-sae-features",
        _sae_features_cli,
        "backdoor: SAE features that separate trigger from control",
    )
    p.add_argument("--sae", required=True, help="SAE folder (SAELens layout)")
    p.add_argument("--pairs", required=True)
    for role in ROLES:
        p.add_argument(f"--capture-{role}", required=True)
    p.add_argument("--sae-capture", required=True, help="the capture the SAE was trained or evaluated on")
    p.add_argument("--sae-record", required=True, help="sae_training.json")
    p.add_argument("--out", required=True, help="sae_features.json")
    add_settings_argument(p, SAEFeatureSettings)


def _data_cli(a) -> None:
    backdoor_data(a.model, a.settings, a.train, a.pairs)


def _analysis_cli(a) -> None:
    backdoor_analysis(
        a.pairs,
        {r: getattr(a, f"projections_{r}") for r in ROLES},
        {r: getattr(a, f"capture_{r}") for r in ROLES},
        {r: getattr(a, r) for r in ROLES},
        a.out,
        a.traits_png,
        a.tokens_png,
        a.train,
        a.settings,
        a.draws,
    )


def _sae_features_cli(a) -> None:
    backdoor_sae_features(
        a.sae,
        a.pairs,
        {r: getattr(a, f"capture_{r}") for r in ROLES},
        a.sae_capture,
        a.sae_record,
        a.out,
        a.settings,
    )


# ---------------------------------------------------------------- the plug-in's summary rows

SECTION = Section(
    "Backdoor detection", (f"ROC-AUC > {AUC_MIN}", "signal before the first generated token"), order=40
)


def result_files(section: dict) -> dict[str, str]:
    """The result files the summary reads, among the enabled section's targets."""
    return among_targets(targets(section), {"detection": "detection_auc.json"})


def criteria(results: dict) -> list:
    """This experiment's rows of the summary table."""
    return backdoor_criteria(results["detection"])
