"""The run's headline: each experiment's success criteria from the plan, met or not.

`traitscope summarize` reads the result JSON each enabled experiment writes and checks it
against the plan's criteria (thresholds in `records`), writing results/summary.json, a Markdown
table (summary.md) and the same table as an HTML fragment (summary.html) that the Snakemake
report shows on its first page. Every row carries the measured number, its 95% CI where the
result has one, and n. A criterion reads `not run` when its experiment is off, and `not
measured` when the run computes no number for it (said why in the row's detail).

The package's face is what the workflow and the CLI use: the result files the summarize rule
reads (`workflow_inputs`, `cli_args`) and the `traitscope summarize` command; it re-exports
`summarize`, so `from traitscope.summary import X` works unchanged. The work is in its modules:
records (statuses, the plan's thresholds, a row, a result file), separation (criteria on how
well trait projections tell labelled sets apart: trait vectors, external datasets, backdoor),
effects (criteria on effect sizes: prefill, emergent misalignment, steering optimisation),
sections (the table's sections and `summarize`) and tables (summary.md and summary.html).
"""

from __future__ import annotations

from traitscope.summary.sections import summarize

# ------------------------------------------------------------------ workflow and CLI

INPUT_KEYS = (
    "traits",
    "harmbench",
    "beavertails",
    "prefill",
    "emergent_misalignment",
    "backdoor",
    "steering_optimisation",
)


def workflow_inputs(config: dict) -> dict[str, str]:
    """The result files the enabled experiments write (from each plug-in's own targets)."""
    import importlib

    files = {"traits": f"results/traits/{config['base_model']}/summary.json"}
    wanted = {
        "harmbench": ("external", "harmbench_results.json"),
        "beavertails": ("external", "beavertails_results.json"),
        "prefill": ("prefill", "condition_comparison.json"),
        "emergent_misalignment": ("emergent_misalignment", "variant_comparison.json"),
        "backdoor": ("backdoor", "detection_auc.json"),
        "steering_optimisation": ("steering_optimisation", "extraction_gap.json"),
    }
    for key, (experiment, name) in wanted.items():
        section = config["experiments"][experiment]
        if not section["enabled"]:
            continue
        module = importlib.import_module(f"traitscope.experiments.{experiment}")
        found = [t for t in module.targets(section) if t.endswith(f"/{name}")]
        if found:  # harmbench or beavertails may be off within external
            files[key] = found[0]
    return files


def cli_args(files: dict[str, str]) -> str:
    """`--<key> PATH` for every input key, `none` for those not run."""
    return " ".join(f"--{k.replace('_', '-')} {files.get(k, 'none')}" for k in INPUT_KEYS)


def add_commands(add) -> None:
    p = add(
        "summarize", _summarize_cli, "the plan's success criteria per experiment (summary.json/.md/.html)"
    )
    for key in INPUT_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", required=True, help=f"the {key} result JSON, or none")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-html", required=True)


def _summarize_cli(a) -> None:
    inputs = {k: getattr(a, k) for k in INPUT_KEYS}
    summarize({k: (None if v == "none" else v) for k, v in inputs.items()}, a.out_json, a.out_md, a.out_html)
