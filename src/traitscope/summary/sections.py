"""The table's sections and `summarize`: the trait vectors' and every plug-in's criteria.

Each registered experiment plug-in with a `SECTION` has a section; it lists its planned
criteria as `not run` when the experiment is off, so the table always shows the whole plan.
`summarize` reads the result files once and writes summary.json, summary.md and summary.html.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from traitscope.errors import TraitscopeError
from traitscope.io import atomic_path, write_json
from traitscope.summary.records import MET, NOT_RUN, STATUSES, Criterion, Result
from traitscope.summary.tables import html_table, markdown_table
from traitscope.summary.trait_criteria import trait_criteria

TRAITS_TITLE = "Trait vectors (extraction check)"


def _overall(rows: list[Criterion]) -> str:
    statuses = {r.status for r in rows}
    if statuses == {NOT_RUN}:
        return NOT_RUN
    if statuses == {MET}:
        return MET
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES}
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != MET)
    return f"{counts[MET]} of {len(rows)} met ({others})"


def summarize(inputs: dict, out_json: str | Path, out_md: str | Path, out_html: str | Path) -> dict:
    """Every section's criteria from `{"traits": path, "results": {plugin: {key: path}}}`; a
    plug-in absent from "results" is off."""
    from traitscope.experiments.contract import registered

    traits = Result(inputs["traits"])
    sections = [_section("traits", TRAITS_TITLE, {"traits": traits}, lambda r: trait_criteria(r["traits"]))]
    plugins = sorted(
        ((name, p) for name, p in registered().items() if p.SECTION is not None),
        key=lambda np: np[1].SECTION.order,
    )
    ran = inputs.get("results", {})
    unknown = sorted(set(ran) - set(registered()))
    if unknown:  # its results would be left out of the table without a word
        raise TraitscopeError(
            f"--results: {unknown[0]!r} is no registered experiment; fix the name (known: "
            f"{', '.join(registered())})"
        )
    for name, plugin in plugins:
        title, planned = plugin.SECTION.title, plugin.SECTION.planned
        if name not in ran:
            rows = [Criterion(c, NOT_RUN, detail="experiment not enabled") for c in planned]
            sections.append(
                {
                    "name": name,
                    "title": title,
                    "sources": [],
                    "status": NOT_RUN,
                    "criteria": [asdict(r) for r in rows],
                }
            )
            continue
        results = {key: Result(path) for key, path in ran[name].items()}
        sections.append(_section(name, title, results, plugin.criteria))
    summary = {
        "what": "the criteria of the trait vectors and each experiment, each with the measured number, its "
        "95% CI, n and a status read off the CI",
        "statuses": STATUSES,
        "sections": sections,
    }
    with atomic_path(out_md) as tmp:
        tmp.write_text(markdown_table(summary))
    with atomic_path(out_html) as tmp:
        tmp.write_text(html_table(summary))
    write_json(out_json, summary)  # last: its presence means every output was written
    return summary


def _section(name: str, title: str, results: dict[str, Result], read: Callable[[dict], list]) -> dict:
    """One section: its rows, read from its result files; a field the reader did not check is an
    error naming those files."""
    try:
        rows = read(results)
    except (KeyError, TypeError) as exc:
        files = ", ".join(str(r.path) for r in results.values())
        raise TraitscopeError(
            f"{files}: missing or malformed field {exc}; rerun the rule that writes it"
        ) from None
    return {
        "name": name,
        "title": title,
        "sources": [str(r.path) for r in results.values()],
        "status": _overall(rows),
        "criteria": [asdict(r) for r in rows],
    }
