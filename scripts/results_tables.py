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
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from effect_tables import emergent_misalignment, prefill, steering  # noqa: E402
from snapshot_tables import _ci, _rel, backdoor, cmaes, hard_negatives, transfer  # noqa: E402

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
        paragraphs = "\n".join(COMMIT.sub("", line).strip() for line in after).split("\n\n")
        notes = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())  # as the file breaks them
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


def _json_tables(
    sources: Sources, page: Path, pattern: str, head: str, row: Callable[[dict, dict], str]
) -> str:
    """One table per benchmark JSON matching `pattern` (its `rows`, one line each by `row(r,
    data)`), each under a line naming the file and its CPU; "" when none matches."""
    parts = []
    for path in sorted(sources.benchmarks.glob(pattern)):
        data = json.loads(path.read_text())
        rows = "\n".join(row(r, data) for r in data["rows"])
        parts.append(f"From [{path.name}]({_rel(path, page)}) (CPU: {data['cpu']}):\n\n{head}{rows}")
    return "\n\n".join(parts) + "\n" if parts else ""


def judge_agreement(sources: Sources, page: Path) -> str:
    """Each `judge_written_*.json` (benchmarks/judge_written.py): judge x trait, the truth-set AUC
    with CI and the gate, the run's held-out AUC with CI, CPU-s per judgement."""
    head = (
        "| judge | trait | train CV | truth AUC [95% CI] | gate | run held-out AUC [95% CI] | CPU-s/j |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    text = _json_tables(
        sources,
        page,
        "judge_written_*.json",
        head,
        lambda r, _: (
            f"| {r['judge']} | {r['trait']} | {'' if r['cv'] is None else format(r['cv'], '.3f')} "
            f"| {_ci(r['truth'])} | {'pass' if r['passes'] else 'fail'} | {_ci(r['held'])} | {r['cpu']:.2g} |"
        ),
    )
    command = "PYTHONPATH=src python benchmarks/judge_written.py --work DIR --reader gemma3=<manifest>"
    return text or f"No `judge_written_*.json` yet: `{command}`.\n"


def deception_facts(sources: Sources, page: Path) -> str:
    """Each `deception_facts_*.json` (benchmarks/deception_facts.py): the deception judges with and
    without reference facts on the confirmation set and the truth set."""
    text = _json_tables(
        sources,
        page,
        "deception_facts_*.json",
        "| judge | confirmation AUC [95% CI] | truth AUC [95% CI] |\n|---|---|---|\n",
        lambda r, data: (
            f"| {r['judge']}{' (the default)' if r['judge'] == data['default'] else ''} "
            f"| {_ci(r['confirmation'])} | {_ci(r['truth'])} |"
        ),
    )
    command = "PYTHONPATH=src python benchmarks/deception_facts.py --reader <manifest>"
    return text or f"No `deception_facts_*.json` yet: `{command}`.\n"


RENDERERS: dict[str, Callable[[Sources, Path], str]] = {
    "backdoor": backdoor,
    "cmaes": cmaes,
    "hard-negatives": hard_negatives,
    "transfer": transfer,
    "steering": steering,
    "prefill": prefill,
    "emergent-misalignment": emergent_misalignment,
    "judge-agreement": judge_agreement,
    "deception-facts": deception_facts,
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
    # the committed snapshot the pages show; a run's own: --summary results/summary.json
    snapshot = ROOT / "benchmarks/results/summary_default_bf16_epyc.json"
    parser.add_argument("--summary", type=Path, default=snapshot)
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
