"""The run's headline: the trait vectors' and each enabled experiment's criteria, with statuses.

`traitscope summarize` reads the trait summary and the result files each enabled experiment
plug-in names (`result_files`), turns them into rows (the core's trait criteria, each plug-in's
own `criteria`) and writes results/summary.json, a Markdown table (summary.md) and the same
table as an HTML fragment (summary.html) that the Snakemake report shows on its first page.
Every row carries the measured number, its 95% CI, n and a status read off the CI
(`records.STATUSES`). A plug-in's criteria read `not run` when it is off.

The package names no experiment: it loops over `traitscope.experiments.contract.registered()`.
Its modules: records (statuses, the CI rules, the judge gate, a row, a result file),
separation (the trait vectors' own criterion), sections (the table's sections and `summarize`)
and tables (summary.md and summary.html).
"""

from __future__ import annotations

import json

from traitscope.errors import TraitscopeError
from traitscope.summary.sections import summarize


def workflow_inputs(config: dict) -> dict[str, str]:
    """The result files the summary reads: the trait summary, then each enabled plug-in's, keyed
    `<plugin>__<key>` (Snakemake input names)."""
    from traitscope.experiments.contract import registered

    files = {"traits": f"results/traits/{config['base_model']}/summary.json"}
    for name, plugin in registered().items():
        section = config["experiments"].get(name, {})
        if section.get("enabled"):
            files.update({f"{name}__{key}": path for key, path in plugin.result_files(section).items()})
    return files


def cli_args(files: dict[str, str]) -> str:
    """`--traits PATH --results JSON`: the inputs of `workflow_inputs` as summarize's arguments."""
    results: dict[str, dict[str, str]] = {}
    for key, path in files.items():
        if key != "traits":
            name, _, result = key.partition("__")
            results.setdefault(name, {})[result] = path
    return f"--traits {files['traits']} --results '{json.dumps(results)}'"


def add_commands(add) -> None:
    p = add("summarize", _summarize_cli, "the criteria of the trait vectors and every enabled experiment")
    p.add_argument("--traits", required=True, help="the trait vectors' summary.json")
    p.add_argument(
        "--results",
        required=True,
        help='{"<experiment>": {"<key>": "result file"}} for each enabled experiment plug-in, as JSON',
    )
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-html", required=True)


def _summarize_cli(a) -> None:
    try:
        results = json.loads(a.results)
    except json.JSONDecodeError as exc:
        raise TraitscopeError(f"--results: not JSON ({exc})") from None
    summarize({"traits": a.traits, "results": results}, a.out_json, a.out_md, a.out_html)
