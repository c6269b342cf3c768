import json
import os
import re
import shutil

from snakemake.exceptions import WorkflowError

from traitscope.capture.settings import CaptureSettings
from traitscope.config import check, finetune_settings, validate_config
from traitscope.data.registry import bundled_path, is_bundled
from traitscope.data.traits import bundled_sources, contrast_pool
from traitscope.errors import TraitscopeError
from traitscope.experiments.contract import (
    capture_requests,
    derived_capture,
    projected_captures,
)
from traitscope.judge.settings import AgreementSettings, JudgementSettings
from traitscope.model.loading import template_file
from traitscope.paths import projections_path, prompts_path, trait_dir
from traitscope.settings import as_json
from traitscope.training.settings import FinetuneSettings
from traitscope.data.settings import TraitPromptSettings
from traitscope.vectors.settings import (
    DrawSettings,
    ExtractionSettings,
    SteeringCheckSettings,
    TraitSummarySettings,
)

# Validation fills every default from the schema (the one place defaults live), so the
# rules below pass every value explicitly and no CLI default is ever used. Errors name where
# the config came from: its files in merge order, then --config's values.
_CLI_FILES = [str(f) for f in workflow.config_settings.configfiles]
CONFIG_SOURCE = "config ({})".format(
    ", ".join(
        [os.path.relpath(f) for f in workflow.configfiles if str(f) not in _CLI_FILES]
        + [os.path.relpath(f) for f in _CLI_FILES]
        + (["--config"] if workflow.config_settings.config else [])
    )
)
try:
    validate_config(
        config,
        os.path.join(workflow.basedir, "schemas", "config.schema.yaml"),
        CONFIG_SOURCE,
    )
except TraitscopeError as exc:
    raise WorkflowError(str(exc))
try:
    check(config)
except TraitscopeError as exc:
    raise WorkflowError(f"{CONFIG_SOURCE}: {exc}")


NAME = "[A-Za-z0-9_.-]+"
TRAIT_SET = "traits/[A-Za-z0-9_-]+/[A-Za-z0-9_-]+"


wildcard_constraints:
    variant=NAME,
    prompt_set=f"{NAME}|{TRAIT_SET}",
    group="[A-Za-z0-9_-]+",
    trait="[A-Za-z0-9_-]+",


# Model jobs (capture, finetune, steering check) hold a GPU where nvidia-smi shows one: with
# `--resources gpu=1` (`make run` passes it) a GPU workstation runs them one at a time. A
# machine without a GPU runs them on its cores, side by side as `threads` allow. Cluster
# profiles set `gpu` per rule themselves.
def _local_gpu():
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1")
    return bool(shutil.which("nvidia-smi")) and not hidden


MODEL_GPU = 1 if _local_gpu() else 0

BASE = config["base_model"]
TRAITS_DIR = config["traits_dir"]
CONFIGURED_SETS = "|".join(map(re.escape, config["prompt_sets"])) or "(?!)"

# What enabled experiments add, read by rule all and the capture rule (the captures their
# plug-ins ask for, checked against each other with the config, and their targets)
_REQUESTS = capture_requests(config)
REQUESTED_CAPTURES = projected_captures(config, _REQUESTS)
# prompt set -> the capture settings an experiment derives for it, or None: the set's own
DERIVED_CAPTURE = derived_capture(config, _REQUESTS)
# one get_<name>_targets function per enabled experiment (their .smk files)
EXPERIMENT_TARGETS = []


# Prompt-contrast traits (two labelled prompt sets, no answers) -> the pool they are read at;
# persona traits are absent. Neither kind's settings depend on the other's.
CONTRAST_POOL = {
    t: pool
    for t in config["traits"]
    if (pool := contrast_pool(f"{TRAITS_DIR}/{t}.yaml")) is not None
}
PERSONA_TRAITS = [t for t in config["traits"] if t not in CONTRAST_POOL]

JUDGE = config["judge"]
FILTER = config["extraction"]["filter"]


def is_enabled(experiment):
    """Whether an experiment section is switched on (schema default: off)."""
    return config["experiments"][experiment]["enabled"]


def get_final_output():
    """Every trait's vectors and evaluation, the summary, projections and experiment targets.
    A finetuned variant is trained when something captures it, not merely for being configured.
    """
    out = [
        f"results/models/{BASE}/manifest.json",
        f"results/traits/{BASE}/summary.json",
    ]
    for trait in config["traits"]:
        out += [
            f"{trait_dir(BASE, trait)}/{name}"
            for name in ("vectors.safetensors", "evaluation.json", "evaluation.png")
        ]
    out += [projections_path(v, p) for v, p in REQUESTED_CAPTURES]
    for targets in EXPERIMENT_TARGETS:
        out += targets()
    steering = config["steering_check"]
    if steering["enabled"]:
        out.append(f"{trait_dir(BASE, steering['trait'])}/steering.json")
    # the judge reads answers: prompt-contrast traits have none
    for trait in PERSONA_TRAITS:
        if JUDGE["agreement"]:
            out.append(f"{trait_dir(BASE, trait)}/judge_agreement.json")
            out += [p for p in [truth_agreement_path(BASE, trait)] if p]
        if FILTER["enabled"]:
            out.append(f"{trait_dir(BASE, trait)}/judge_filter.json")
    return out


def get_model_spec(wildcards):
    """The variant's models: entry as JSON, for `traitscope prepare-model`."""
    return json.dumps(config["models"][wildcards.variant], sort_keys=True)


def get_base_manifest(wildcards):
    """A LoRA or finetuned variant is prepared after its base variant."""
    entry = config["models"][wildcards.variant]
    source = entry.get("lora") or entry.get("finetune")
    return [f"results/models/{source['base']}/manifest.json"] if source else []


def get_chat_template_file(wildcards):
    """A variant's chat_template file (not Jinja text): an input, so editing the template reruns
    the variant's preparation and every job that rendered prompts with it."""
    template = template_file(config["models"][wildcards.variant].get("chat_template"))
    return [template] if template else []


def get_trained_adapter(wildcards):
    """A finetuned variant is prepared from the adapter its finetune job trains."""
    if "finetune" not in config["models"][wildcards.variant]:
        return []
    return [f"results/finetune/{wildcards.variant}/adapter"]


def get_finetune_base_manifest(wildcards):
    base = config["models"][wildcards.variant]["finetune"]["base"]
    return f"results/models/{base}/manifest.json"


def get_finetune_data(wildcards):
    return config["models"][wildcards.variant]["finetune"]["data"]


def get_finetune_settings(wildcards):
    """Every finetune setting as JSON: a changed setting retrains (and recaptures) the variant."""
    return as_json(FinetuneSettings, finetune_settings(config, wildcards.variant))


def get_manifest(wildcards):
    return f"results/models/{wildcards.variant}/manifest.json"


def get_trait_file(wildcards):
    return f"{TRAITS_DIR}/{wildcards.group}/{wildcards.trait}.yaml"


def get_trait_bundled(wildcards):
    """The project's own prompt files a prompt-contrast trait reads (its `pairs`): editing one
    reruns the trait's prompt set."""
    return bundled_sources(get_trait_file(wildcards))


def get_trait_position(wildcards):
    """Where a trait's vectors are built and scored: a persona trait's answers
    (extraction.position), a prompt-contrast trait's own pool."""
    name = f"{wildcards.group}/{wildcards.trait}"
    return CONTRAST_POOL.get(name, config["extraction"]["position"])


def get_trait_sources_arg(wildcards):
    """A prompt-contrast trait reads its prompt sources (from the mirror when set); a persona
    trait reads nothing else, so the mirror setting never reruns it."""
    if f"{wildcards.group}/{wildcards.trait}" not in CONTRAST_POOL:
        return ""
    return f"{get_mirror_arg()} --cache-dir results/cache"


def get_steering_prompts(wildcards):
    """A prompt-contrast trait is steered on its held-out negatives, read from its prompt set;
    a persona trait's questions are in its file."""
    name = f"{wildcards.group}/{wildcards.trait}"
    return [prompts_path(f"traits/{name}")] if name in CONTRAST_POOL else []


def get_evaluations(wildcards):
    return [
        f"{trait_dir(wildcards.variant, t)}/evaluation.json" for t in config["traits"]
    ]


def opt(flag, value):
    """A CLI option with a nullable value: `null` in the config is the word `none`."""
    return f"{flag} {'none' if value is None else value}"


def get_prompt_spec(wildcards):
    """The prompt set's entry (without capture overrides) as JSON, for `traitscope prep-prompts`."""
    entry = config["prompt_sets"][wildcards.prompt_set]
    return json.dumps(
        {k: v for k, v in entry.items() if k != "capture"}, sort_keys=True
    )


def get_prompt_match(wildcards):
    """A length-matched set is drawn after the set whose lengths it matches."""
    target = config["prompt_sets"][wildcards.prompt_set].get("match_length")
    return [prompts_path(target)] if target else []


def get_prompt_source(wildcards):
    """A bundled prompt file (the project's own, under resources/) is an input: editing it reruns
    the set; fetched and mirrored files are not, so a mirror setting never reruns anything.
    """
    entry = config["prompt_sets"][wildcards.prompt_set]
    if is_bundled(entry["dataset"]):
        return [str(bundled_path(entry["dataset"], entry["file"]))]
    return []


def get_match_arg(wildcards, input):
    return opt("--match-to", input.match[0] if input.match else None)


def get_mirror_arg():
    return opt("--data-mirror", config["data_mirror"])


def capture_settings(prompt_set):
    """Every capture setting of a prompt set: global, then experiment, then per-set overrides.

    A trait's contrastive set is generated and captured at every layer with the
    extraction settings, so its vectors can be scored per layer.
    """
    if prompt_set.removeprefix("traits/") in CONTRAST_POOL:
        ex = config["extraction"]
        return {
            **config["capture"],
            "layers": "all",
            "pools": [CONTRAST_POOL[prompt_set.removeprefix("traits/")]],
            "token_segments": [],
            "keep_all_tokens": False,
            "max_new_tokens": 0,  # the prompt is the trait: one forward pass, nothing generated
            **{k: ex[k] for k in ("temperature", "seed", "max_tokens")},
            "storage_dtype": ex["storage_dtype"],
        }
    if prompt_set.startswith("traits/"):
        ex = config["extraction"]
        return {
            **config["capture"],
            "layers": "all",
            "pools": ex["pools"],
            "token_segments": [],
            "keep_all_tokens": False,
            **{
                k: ex[k]
                for k in ("max_new_tokens", "temperature", "seed", "max_tokens")
            },
            "storage_dtype": ex["storage_dtype"],
        }
    return {
        **config["capture"],
        **(DERIVED_CAPTURE.get(prompt_set) or {}),
        **config["prompt_sets"].get(prompt_set, {}).get("capture", {}),
    }


def settings_param(cls, section):
    """A stage's `--settings` as a param: a function, so Snakemake never reads braces in the
    JSON (a regex setting's `{3}`) as wildcards."""
    text = as_json(cls, section)
    return lambda wildcards: text


def get_capture_settings(wildcards):
    """The prompt set's capture section as one JSON argument, so a changed setting reruns it."""
    return as_json(CaptureSettings, capture_settings(wildcards.prompt_set))


def get_base_vectors(wildcards):
    return [f"{trait_dir(BASE, t)}/vectors.safetensors" for t in config["traits"]]


def get_base_evaluations(wildcards):
    return [f"{trait_dir(BASE, t)}/evaluation.json" for t in config["traits"]]


def get_project_traits(wildcards, input):
    """`--trait NAME VECTORS EVALUATION` for every trait (base-model vectors, any variant)."""
    return " ".join(
        f"--trait {t} {v} {e}"
        for t, v, e in zip(config["traits"], input.vectors, input.evaluations)
    )
