import json

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
    steering = config["steering_check"]
    if steering["enabled"]:
        out.append(f"{trait_dir(BASE, steering['trait'])}/steering.json")
    return out


def get_model_spec(wildcards):
    """The variant's models: entry as JSON, for the prepare-model CLI."""
    return json.dumps(config["models"][wildcards.model], sort_keys=True)


def get_manifest(wildcards):
    return f"results/models/{wildcards.model}/manifest.json"


def get_trait_file(wildcards):
    return f"{TRAITS_DIR}/{wildcards.group}/{wildcards.trait}.yaml"


def get_evaluations(wildcards):
    return [f"{trait_dir(wildcards.model, t)}/evaluation.json" for t in config["traits"]]


def get_steering(key):
    """A steering_check setting (schema defaults are filled in by validate)."""
    return config["steering_check"][key]


def extraction(key):
    """An extraction setting (schema defaults are filled in by validate)."""
    return config["extraction"][key]


def opt(flag, value):
    """A CLI option, or nothing when the value is None (the CLI default applies)."""
    return "" if value is None else f"{flag} {value}"
