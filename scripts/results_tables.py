"""Rewrite the guide's results tables from the files that hold their numbers.

Why: a number pasted into a page by hand goes stale as soon as the code or the run changes,
and nothing says so. Each table in README.md and docs/ sits between
`<!-- generated: NAME -->` and `<!-- end generated: NAME -->`; this script rewrites what lies
between from a run's `results/summary.json` (written by `traitscope summarize`) and the
benchmark results in `benchmarks/results/`. Where the file is absent, the region says which
command makes it instead of keeping old numbers.

    python scripts/results_tables.py                 # every page in PAGES
    python scripts/results_tables.py --check         # exit 1 if a region is out of date
    python scripts/results_tables.py --summary runs/gemma/results/summary.json docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the pages that hold generated regions (a page named here without one is an error)
PAGES = ("README.md", "docs/results.md", "docs/benchmarks.md", "docs/judge.md")
# a results file's header may name the commit it ran at; the guide names none (they go stale)
COMMIT = re.compile(r",? *\b(?:at |commit )+[0-9a-f]{7,40}\b")
REGION = re.compile(
    r"(?P<start><!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)"
    r"(?P<end><!-- end generated: (?P=name) -->)",
    re.DOTALL,
)
MAKE_SUMMARY = (
    "`make run` (or `snakemake --cores 2 --resources gpu=1 results/summary.json`), "
    "then `python scripts/results_tables.py`"
)


class RegionError(ValueError):
    """A page without generated regions, or a region this script cannot fill; names the page."""


@dataclass(frozen=True)
class Sources:
    """Where the numbers come from: a run's summary and the benchmark results folder."""

    summary: Path
    benchmarks: Path


def _rel(path: Path, page: Path) -> str:
    """A path as a Markdown link target, relative to the page that shows it."""
    return Path(os.path.relpath(path.resolve(), page.resolve().parent)).as_posix()


def _shown(path: Path) -> str:
    """A path as written in prose: relative to the checkout where it lies inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _load_summary(sources: Sources) -> dict | None:
    if not sources.summary.is_file():
        return None
    return json.loads(sources.summary.read_text())


def _missing_summary(sources: Sources) -> str:
    return f"No `{_shown(sources.summary)}` here, so no numbers to show. To fill this: {MAKE_SUMMARY}.\n"


def _measured(row: dict) -> str:
    from traitscope.summary.tables import _measured as measured  # the summary's own format

    return measured(row)


def headline(sources: Sources, page: Path) -> str:
    """One row per criterion, without the detail column: the README's table."""
    summary = _load_summary(sources)
    if summary is None:
        return _missing_summary(sources)
    lines = [
        f"From `{_shown(sources.summary)}`; every criterion's detail (which trait, layer and null) "
        "is in [docs/results.md](" + _rel(ROOT / "docs/results.md", page) + ").",
        "",
        "| experiment | criterion | measured [95% CI] ±half-width | n | status |",
        "|---|---|---|---|---|",
    ]
    for section in summary["sections"]:
        for row in section["criteria"]:
            cells = [section["title"], row["criterion"], _measured(row), row["n"] or "-", row["status"]]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def summary_table(sources: Sources, page: Path) -> str:
    """The whole criteria table, exactly as `traitscope summarize` writes summary.md."""
    from traitscope.summary.tables import markdown_table

    summary = _load_summary(sources)
    if summary is None:
        return _missing_summary(sources)
    sections = "; ".join(f"{s['title']}: {s['status']}" for s in summary["sections"])
    return (
        f"From `{_shown(sources.summary)}` ({summary['what']}). By experiment: {sections}.\n\n"
        + markdown_table(summary)
    )


def capture_benchmarks(sources: Sources, page: Path) -> str:
    """Capture throughput from every `capture_*.json` result that `benchmarks/capture_gpu.py` wrote."""
    rows = []
    for path in sorted(sources.benchmarks.glob("capture_*.json")):
        result = json.loads(path.read_text())
        if "traitscope_tokens_per_s" not in result:  # another script's format (capture_multigpu.py)
            continue
        peak = result.get("peak_gib_scaled")
        rows.append(
            f"| [{path.name}]({_rel(path, page)}) | {result['device']} | {result['model']} "
            f"| {result['n_prompts']} | {result['traitscope_tokens_per_s']:,} "
            f"| {result['naive_tokens_per_s']:,} "
            f"| {result['ratio_vs_naive']}x | {result['roofline_fraction']:.1%} "
            f"| {'-' if peak is None else peak} |"
        )
    if not rows:
        folder = _shown(sources.benchmarks)
        return f"No `capture_*.json` in `{folder}`: `benchmarks/capture_gpu.py --json` writes one.\n"
    head = [
        "| result | device | model | prompts | tok/s | naive tok/s | ratio | of bf16 matmul | peak GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def benchmark_files(sources: Sources, page: Path) -> str:
    """Every committed benchmark result, with its first line (the command or what it measured)."""
    lines = []
    for path in sorted(p for p in sources.benchmarks.iterdir() if p.suffix in {".txt", ".json"}):
        if path.suffix == ".json" and path.with_suffix(".txt").is_file():
            continue  # the .txt beside it is the same run, printed
        first = path.read_text().splitlines()[0].lstrip("#$ ").strip() if path.stat().st_size else ""
        if path.suffix == ".json" or first in {"{", ""}:
            first = "JSON"
        lines.append(f"- [{path.name}]({_rel(path, page)}): {COMMIT.sub('', first)[:160]}")
    if not lines:
        return f"No benchmark results in `{_shown(sources.benchmarks)}`.\n"
    return "\n".join(lines) + "\n"


def precision(sources: Sources, page: Path) -> str:
    """Each `precision_*.txt` (benchmarks/precision.sh): its CPU, both runs' times and the two
    criteria tables side by side, as the script printed them."""
    parts = []
    for path in sorted(sources.benchmarks.glob("precision_*.txt")):
        lines = path.read_text().splitlines()
        first = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
        about = [COMMIT.sub("", line.lstrip("# ")) for line in lines[:first] if line.strip()]
        table = [line for line in lines if line.startswith("|")]
        after = [line for line in lines[first:] if not line.startswith("|")]  # the verdict, then prose
        notes = " ".join(COMMIT.sub("", line).strip() for line in after if line.strip())
        parts.append(
            f"From [{path.name}]({_rel(path, page)}): "
            + "; ".join(about)
            + "\n\n"
            + "\n".join(table)
            + (f"\n\n{notes}" if notes else "")
        )
    if not parts:
        command = "bash benchmarks/precision.sh benchmarks/results/precision_<cpu>.txt"
        return f"No `precision_*.txt` yet: `{command}`.\n"
    return "\n\n".join(parts) + "\n"


def _header(lines: list[str], key: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(f"{key}:")), "?")


def times(sources: Sources, page: Path) -> str:
    """The main job's and the suite's wall times, each with its CPU and number format, from
    `precision_*.txt` (benchmarks/precision.sh) and `suite_times_*.txt` (benchmarks/suite_times.sh)."""
    rows = []
    for pattern, what, line_re in (
        ("precision_*.txt", "the main job, every experiment", r"^(fp32|bf16) main job: (\d+) s; (.*)$"),
        ("suite_times_*.txt", "`make test`'s pytest", r"^suite (native|fp32): (\d+) s; (.*)$"),
    ):
        for path in sorted(sources.benchmarks.glob(pattern)):
            lines = path.read_text().splitlines()
            cpu = f"{_header(lines, 'cpu')}, {_header(lines, 'cores')} cores"
            for line in lines:
                if m := re.match(line_re, line):
                    wall = f"{m[2]} s ({int(m[2]) // 60} min {int(m[2]) % 60} s)"
                    rows.append(
                        f"| {what} | {cpu} | {m[1]}: {m[3]} | {wall} | [{path.name}]({_rel(path, page)}) |"
                    )
    if not rows:
        return "No `precision_*.txt` or `suite_times_*.txt` yet: `bash benchmarks/precision.sh ...`.\n"
    head = "| | CPU | mode | wall | from |\n|---|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def _ci(r: dict | None) -> str:
    return "n/a" if r is None else f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def judge_agreement(sources: Sources, page: Path) -> str:
    """Each `judge_written_*.json` (benchmarks/judge_written.py): judge x trait, the truth-set AUC
    with CI and the gate, the run's held-out AUC with CI, CPU-s per judgement."""
    parts = []
    for path in sorted(sources.benchmarks.glob("judge_written_*.json")):
        data = json.loads(path.read_text())
        rows = [
            f"| {r['judge']} | {r['trait']} | {'' if r['cv'] is None else format(r['cv'], '.3f')} "
            f"| {_ci(r['truth'])} | {'pass' if r['passes'] else 'fail'} | {_ci(r['held'])} | {r['cpu']:.2g} |"
            for r in data["rows"]
        ]
        head = (
            "| judge | trait | train CV | truth AUC [95% CI] | gate | run held-out AUC [95% CI] | CPU-s/j |\n"
            "|---|---|---|---|---|---|---|\n"
        )
        parts.append(
            f"From [{path.name}]({_rel(path, page)}) (CPU: {data['cpu']}):\n\n" + head + "\n".join(rows)
        )
    if not parts:
        command = "PYTHONPATH=src python benchmarks/judge_written.py --work DIR --reader gemma3=<manifest>"
        return f"No `judge_written_*.json` yet: `{command}`.\n"
    return "\n\n".join(parts) + "\n"


def _diff(r: dict) -> str:
    return f"{r['difference']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"


def hard_negatives(sources: Sources, page: Path) -> str:
    """The held-out hard negatives (issue 28) from the main job's snapshots: each trait and pool's
    AUC beside the bag of words fitted on its rows and prompt length (`transfer_*.json`, the
    run's transfer.json), and the AUC per category (`hard_negatives_default_*.json`, the external
    experiment's hard_negatives_results.json)."""
    transfers = sorted(sources.benchmarks.glob("transfer_default_*.json"))
    categories = sorted(sources.benchmarks.glob("hard_negatives_default_*.json"))
    if not transfers or not categories:
        return "No `transfer_default_*.json` / `hard_negatives_default_*.json` snapshot yet: copy a run's.\n"
    transfer = json.loads(transfers[-1].read_text())
    held = transfer["sets"]["hardneg_harmful"]["pools"]
    rows = [
        f"| `{trait}` | {pool} | {_ci(r['auc'])} | {r['vs_bag_of_words']['auc_b']:.3f} "
        f"| {_diff(r['vs_bag_of_words'])} | {r['vs_length']['auc_b']:.3f} |"
        for trait in transfer["traits"]
        for pool, by_trait in held.items()
        if (r := by_trait.get(trait))
    ]
    n = next(iter(next(iter(held.values())).values()))["auc"]
    out = (
        f"From [{transfers[-1].name}]({_rel(transfers[-1], page)}) (n = {n['n_pos']} + {n['n_neg']} "
        "held-out pairs, 95% CIs; each trait beside the bag of words fitted on its vector's rows):\n\n"
        "| trait | pool | hard-negative AUC | bag of words | trait - bag of words | length |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    external = json.loads(categories[-1].read_text())
    names = sorted(next(iter(external["traits"].values()))["by_category"])
    rows = [
        f"| `{trait}` ({external['position_of'][trait]}) | "
        + " | ".join(f"{r['by_category'][c]['auc']:.2f}" for c in names)
        + " |"
        for trait, r in external["traits"].items()
    ]
    out += (
        f"\nPer category (AUC, {external['n_harmful'] // len(names)} pairs each; the external experiment, "
        f"each trait at its pool, [{categories[-1].name}]({_rel(categories[-1], page)})):\n\n"
        f"| trait | {' | '.join(names)} |\n|---|{'---|' * len(names)}\n" + "\n".join(rows) + "\n"
    )
    return out


def _delta(d: dict) -> str:
    t = d["trait"]
    if t.get("ci_low") is None:
        return f"{t.get('mean_diff', float('nan')):+.1f}"
    return f"{t['mean_diff']:+.1f} (d_z [{t['ci_low']:+.2f}, {t['ci_high']:+.2f}])"


def _gain(g: dict) -> str:
    ci = f" [{g['ci_low']:.2f}, {g['ci_high']:.2f}]" if g.get("ci_low") is not None else " (no CI)"
    return "n/a" if g.get("gain") is None else f"{g['gain']:.2f}{ci}"


def cmaes(sources: Sources, page: Path) -> str:
    """CMA-ES's held-out check from a snapshot of the main job's extraction_gap.json
    (`cmaes_default_*.json`): per trait, each scorer's steering deltas against no vector, the
    gain over mean_diff, and the scorer's truth-set agreement; the training fitness beside."""
    snapshots = sorted(sources.benchmarks.glob("cmaes_default_*.json"))
    if not snapshots:
        return "No `cmaes_default_*.json` snapshot yet: copy a run's results/cmaes/extraction_gap.json.\n"
    gap = json.loads(snapshots[-1].read_text())
    rows = []
    for trait, t in gap["traits"].items():
        held, fitness_truth = t["heldout"], t.get("judge_truth_agreement")
        if held.get("scorer") == "independent":
            scorers = [("held-out scorer", held, held.get("judge_truth_agreement"))]
            scorers.append(("fitness judge", held["fitness_judge"], fitness_truth))
        else:
            scorers = [("fitness judge", held, fitness_truth)]
        for name, scored, agreement in scorers:
            judge = scored.get("judge") or {}
            features = (judge.get("classifier") or {}).get("features") or judge.get("backend", "?")
            deltas = scored["steering_delta"]
            rows.append(
                f"| `{trait}` | {name} ({features}) | {_ci(agreement)} | {_delta(deltas['mean_diff'])} "
                f"| {_delta(deltas['optimised'])} | {_gain(scored['gain_vs_mean_diff'])} |"
            )
    first = next(iter(gap["traits"].values()))
    training, n = first["training"], first["heldout"]["n_questions"]
    return (
        f"From [{snapshots[-1].name}]({_rel(snapshots[-1], page)}) ({n} held-out questions; deltas are "
        "trait-score points against no vector, with the d_z's 95% CI; gain = (delta optimised - delta "
        "mean_diff) / |delta mean_diff| with its paired bootstrap CI; truth AUC: the scorer's agreement "
        "on the written truth set):\n\n"
        "| trait | scorer | truth AUC [95% CI] | delta mean_diff | delta optimised | gain |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Training questions ({training['questions']}, the fitness judge): start "
        f"{training['start_fitness']:.1f}, best {training['best_fitness']:.1f} (generation "
        f"{training['best_generation']}); {_cosines(first['cosines'])}.\n"
    )


def _cosines(cosines: dict) -> str:
    """The optimised vector's cosine with mean_diff, and the optimiser runs' where there are several."""
    text = f"cosine(optimised, mean_diff) {cosines['optimised_vs_mean_diff']:.2f}"
    runs = cosines.get("restarts_vs_mean_diff") or {}
    if runs.get("ci_low") is None:
        return text + " (one optimiser run)"
    values = ", ".join(f"{v:.2f}" for v in runs["values"])
    return (
        f"{text}, the best of {runs['n']} optimiser runs whose best vectors give {values}: mean "
        f"{runs['mean']:.2f} [{runs['ci_low']:.2f}, {runs['ci_high']:.2f}] (t interval over runs)"
    )


def _rate(r: dict) -> str:
    return f"{r['k']}/{r['n']}"


def backdoor(sources: Sources, page: Path) -> str:
    """The backdoor experiment from a snapshot of the main job's detection_auc.json
    (`backdoor_default_*.json`): how often each model shows the backdoor sentence under each
    prefix, then per trait and position the trigger-vs-control AUC on both models, the
    backdoored model's CI over pairs alone and over pairs and vector refits, and the difference."""
    snapshots = sorted(sources.benchmarks.glob("backdoor_default_*.json"))
    if not snapshots:
        copy = "copy a run's results/backdoor_detection/detection_auc.json"
        return f"No `backdoor_default_*.json` snapshot yet: {copy}.\n"
    result = json.loads(snapshots[-1].read_text())
    behaviour = [
        f"| {role} | {_rate(b['trigger']['backdoor_rate'])} | {_rate(b['control']['backdoor_rate'])} "
        f"| {_rate(b['trigger']['accuracy'])} | {_rate(b['control']['accuracy'])} |"
        for role, b in result["behaviour"].items()
    ]
    detection = []
    for trait, t in result["traits"].items():
        for position, entry in t["positions"].items():
            sep = entry["chosen_layer"]
            back = sep["backdoored"]
            over = back.get("over_vector_draws")
            refits = f"[{over['ci_low']:.3f}, {over['ci_high']:.3f}]" if over else "n/a"
            aucs = f"{_ci(sep['base'])} | {_ci(back)} | {refits}"
            detection.append(f"| `{trait}` | {position} | {aucs} | {_diff(sep['difference'])} |")
    return (
        f"From [{snapshots[-1].name}]({_rel(snapshots[-1], page)}) ({result['n_pairs']} held-out pairs; "
        "greedy answers; accuracy: the arithmetic answer is right):\n\n"
        "| model | backdoor sentence, trigger | backdoor sentence, control | accuracy, trigger "
        "| accuracy, control |\n"
        "|---|---|---|---|---|\n" + "\n".join(behaviour) + "\n\n"
        "Trigger (positive) vs control ROC-AUC of each trait's projection at its chosen layer, with "
        "95% CIs over pairs; the backdoored model's CI over pairs and refits of the vector beside it "
        "(what the criterion reads); difference = backdoored - base, paired over pairs:\n\n"
        "| trait | position | base AUC | backdoored AUC | over pairs and refits | difference |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(detection) + "\n"
    )


RENDERERS: dict[str, Callable[[Sources, Path], str]] = {
    "backdoor": backdoor,
    "cmaes": cmaes,
    "hard-negatives": hard_negatives,
    "judge-agreement": judge_agreement,
    "times": times,
    "headline": headline,
    "summary": summary_table,
    "capture-benchmarks": capture_benchmarks,
    "benchmark-files": benchmark_files,
    "precision": precision,
}


def rewrite(page: Path, sources: Sources) -> str:
    """The page's text with every generated region rewritten; the page itself is not written."""
    text = page.read_text()
    if not REGION.search(text):
        raise RegionError(f"{page}: no `<!-- generated: NAME -->` ... `<!-- end generated: NAME -->` region")

    def fill(match: re.Match) -> str:
        name = match["name"]
        if name not in RENDERERS:
            raise RegionError(f"{page}: unknown generated region {name!r} (known: {', '.join(RENDERERS)})")
        body = RENDERERS[name](sources, page)
        return f"{match['start']}{body}{match['end']}"

    return REGION.sub(fill, text)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the pages in place (or, with --check, say which are out of date)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", type=Path, help=f"default: {', '.join(PAGES)}")
    parser.add_argument("--summary", type=Path, default=ROOT / "results/summary.json")
    parser.add_argument("--benchmarks", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page would change")
    args = parser.parse_args(argv)
    sources = Sources(summary=args.summary, benchmarks=args.benchmarks)
    stale = []
    for page in args.pages or [ROOT / p for p in PAGES]:
        new = rewrite(page, sources)
        if new != page.read_text():
            stale.append(page)
            if not args.check:
                page.write_text(new)
    for page in stale:
        print(f"{'out of date' if args.check else 'rewrote'}: {_shown(page)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except RegionError as exc:
        sys.exit(f"error: {exc}")
