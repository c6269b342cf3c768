import json
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from traitscope.config import check
from traitscope.errors import TraitscopeError

validate(config, "../schemas/config.schema.yaml")
try:
    check(config)
except TraitscopeError as exc:
    raise WorkflowError(f"config: {exc}")


wildcard_constraints:
    model="[A-Za-z0-9_.-]+",
    variant="[A-Za-z0-9_.-]+",
    prompt_set="[A-Za-z0-9_.-]+",
    group="[A-Za-z0-9_-]+",
    trait="[A-Za-z0-9_-]+",


TRAITS_DIR = config.get("traits_dir", "resources/traits")
BASE = config["base_model"]


def trait_dir(model, trait):
    """results/traits/<model>/<group>/<trait>: one folder per trait and model."""
    return f"results/traits/{model}/{trait}"


def get_final_output():
    """Every trait's vectors and evaluation on the base model, plus the steering check."""
    out = [f"results/models/{BASE}/manifest.json"]
    for trait in config["traits"]:
        out += [
            f"{trait_dir(BASE, trait)}/vectors.safetensors",
            f"{trait_dir(BASE, trait)}/evaluation.json",
            f"{trait_dir(BASE, trait)}/evaluation.png",
        ]
    out.append(f"results/traits/{BASE}/summary.json")
    out += [f"results/projections/{v}/{p}.parquet" for v, p in get_captures()]
    if config["experiments"]["prefill"]["enabled"]:
        out += PREFILL_OUTPUTS
    if EXTERNAL["enabled"]:
        out += EXTERNAL_OUTPUTS
    steering = config["steering_check"]
    if steering["enabled"]:
        out.append(f"{trait_dir(BASE, steering['trait'])}/steering.json")
    return out


def get_model_spec(wildcards):
    """The variant's models: entry as JSON, for the prepare-model CLI."""
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def get_lora_base_manifest(wildcards):
    """A LoRA variant is prepared after its base variant."""
    lora = config["models"][wildcards.model].get("lora")
    return [f"results/models/{lora['base']}/manifest.json"] if lora else []


def get_manifest(wildcards):
    return f"results/models/{wildcards.model}/manifest.json"


def get_trait_file(wildcards):
    return f"{TRAITS_DIR}/{wildcards.group}/{wildcards.trait}.yaml"


def get_evaluations(wildcards):
    return [
        f"{trait_dir(wildcards.model, t)}/evaluation.json" for t in config["traits"]
    ]


def get_steering(key):
    """A steering_check setting (schema defaults are filled in by validate)."""
    return config["steering_check"][key]


def extraction(key):
    """An extraction setting (schema defaults are filled in by validate)."""
    return config["extraction"][key]


def opt(flag, value):
    """A CLI option, or nothing when the value is None (the CLI default applies)."""
    return "" if value is None else f"{flag} {value}"


def get_captures():
    """(variant, prompt_set) pairs to capture, from `captures:`."""
    return [(c["variant"], c["prompt_set"]) for c in config["captures"]]


def get_prep_inputs(wildcards):
    """A derived prompt set (the prefill conditions) is built from two prepared sets."""
    spec = config["prompt_sets"][wildcards.prompt_set]
    if spec["dataset"] != "conditions":
        return []
    return [f"results/prompts/{spec[k]}.parquet" for k in ("harmful", "harmless")]


def get_prompt_spec(wildcards, input):
    """The prompt set's entry (without capture overrides) as JSON, for `traitscope prep`."""
    entry = config["prompt_sets"][wildcards.prompt_set]
    spec = {k: v for k, v in entry.items() if k != "capture"}
    if spec["dataset"] == "conditions":
        spec.update(harmful_path=input[0], harmless_path=input[1])
    return json.dumps(spec, sort_keys=True)


def get_mirror_arg():
    return opt("--data-mirror", config.get("data_mirror"))


def capture_setting(wildcards, key):
    """A capture setting: the prompt set's override, else the global `capture:` value."""
    override = prompt_set_entry(wildcards.prompt_set).get("capture", {})
    return override.get(key, config["capture"][key])


def get_capture_args(wildcards):
    """Every capture setting as CLI options, so a changed setting reruns the capture."""
    get = lambda key: capture_setting(wildcards, key)
    args = [
        f"--pools {' '.join(get('pools'))}",
        f"--max-new-tokens {get('max_new_tokens')}",
        f"--temperature {get('temperature')}",
        f"--seed {get('seed')}",
        f"--max-tokens {get('max_tokens')}",
        f"--padding-side {get('padding_side')}",
        f"--shard-size {get('shard_size')}",
        f"--storage-dtype {get('storage_dtype')}",
        f"--compile {get('compile')}",
    ]
    if get("token_segments"):
        args.append(f"--token-segments {' '.join(get('token_segments'))}")
    if get("keep_all_tokens"):
        args.append("--keep-all-tokens")
    return " ".join(args)


def get_base_evaluations(wildcards):
    """Every configured trait's evaluation on the base model: their chosen layers are captured."""
    return [f"{trait_dir(BASE, t)}/evaluation.json" for t in config["traits"]]


def get_base_vectors(wildcards):
    return [f"{trait_dir(BASE, t)}/vectors.safetensors" for t in config["traits"]]


def get_project_traits(wildcards, input):
    """`--trait NAME VECTORS EVALUATION` for every trait (base-model vectors, any variant)."""
    return " ".join(
        f"--trait {t} {v} {e}"
        for t, v, e in zip(config["traits"], input.vectors, input.evaluations)
    )


PREFILL_OUTPUTS = [
    "results/prefill/condition_comparison.json",
    "results/prefill/2x2_grid.png",
    "results/prefill/trajectory_divergence.png",
]


def get_prefill_inputs(wildcards):
    """The conditions set, its projections on the experiment's variant, and nothing else."""
    exp = config["experiments"]["prefill"]
    return {
        "conditions": f"results/prompts/{exp['prompt_set']}.parquet",
        "projections": f"results/projections/{exp['variant']}/{exp['prompt_set']}.parquet",
    }


EXTERNAL = config["experiments"]["external"]
EXTERNAL_DIR = "results/external_datasets"
BT_PREFIX = "bt-"  # prompt sets made by the BeaverTails checkpoint: bt-<category slug>


def prompt_set_entry(name):
    """A prompt set's config entry; BeaverTails groups share their source set's entry."""
    if name.startswith(BT_PREFIX):
        return config["prompt_sets"][EXTERNAL["beavertails"]["prompt_set"]]
    return config["prompt_sets"][name]


def get_capture_prompts(wildcards):
    """A prompt set's Parquet; BeaverTails groups come out of the checkpoint's folder."""
    if wildcards.prompt_set.startswith(BT_PREFIX):
        folder = checkpoints.split_beavertails.get().output[0]
        return f"{folder}/{wildcards.prompt_set[len(BT_PREFIX):]}.parquet"
    return f"results/prompts/{wildcards.prompt_set}.parquet"


def beavertails_groups():
    """Category slugs the checkpoint wrote (known once it has run)."""
    folder = checkpoints.split_beavertails.get().output[0]
    return sorted(glob_wildcards(f"{folder}/{{slug}}.parquet").slug)


def get_external_inputs(wildcards):
    """Projections (and prompt sets) that the external-dataset analysis reads."""
    variant, inputs = EXTERNAL["variant"], {}
    if EXTERNAL["harmbench"]:
        sets = EXTERNAL["harmbench"]
        inputs["hb_harmful"] = (
            f"results/projections/{variant}/{sets['harmful']}.parquet"
        )
        inputs["hb_harmless"] = (
            f"results/projections/{variant}/{sets['harmless']}.parquet"
        )
        inputs["hb_prompts"] = f"results/prompts/{sets['harmful']}.parquet"
    if EXTERNAL["beavertails"]:
        folder = checkpoints.split_beavertails.get().output[0]
        slugs = beavertails_groups()
        inputs["bt_proj"] = [
            f"results/projections/{variant}/{BT_PREFIX}{s}.parquet" for s in slugs
        ]
        inputs["bt_prompts"] = [f"{folder}/{s}.parquet" for s in slugs]
    return inputs


def get_external_args(wildcards, input):
    """CLI options naming every input of the external-dataset analysis."""
    named = dict(input.items())
    if not named:  # asked before the BeaverTails checkpoint has run; re-asked after it
        return ""
    args = []
    if EXTERNAL["harmbench"]:
        args.append(
            f"--harmbench-harmful {named['hb_harmful']} --harmbench-harmless {named['hb_harmless']} "
            f"--harmbench-prompts {named['hb_prompts']}"
        )
    if EXTERNAL["beavertails"]:
        for proj, prompts in zip(named["bt_proj"], named["bt_prompts"]):
            group = os.path.basename(prompts).removesuffix(".parquet")
            args.append(f"--beavertails-group {group} {proj} {prompts}")
    return " ".join(args)


def external_outputs():
    """What the external-dataset analysis writes, given which datasets are configured."""
    out = ["failure_cases.json", "score_distributions.png"]
    if EXTERNAL["harmbench"]:
        out += ["harmbench_results.json", "harmbench_auc.png"]
    if EXTERNAL["beavertails"]:
        out += ["beavertails_results.json", "per_category_auc.png"]
    return [f"{EXTERNAL_DIR}/{name}" for name in out]


EXTERNAL_OUTPUTS = external_outputs()
