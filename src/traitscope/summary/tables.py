"""The summary as tables: Markdown (summary.md) and an HTML fragment (summary.html).

The HTML is what the Snakemake report shows on its first page; both render the same rows of
summary.json, one row per criterion.
"""

from __future__ import annotations

import html

from traitscope.summary.records import (
    INCONCLUSIVE,
    MET,
    NOT_MEASURABLE,
    NOT_MEASURED,
    NOT_MET,
    NOT_RUN,
    STATUSES,
    fmt,
)


def _measured(row: dict) -> str:
    """The number, its CI and the CI's half-width (how far n is from deciding it)."""
    if row["measured"] is None:
        return "-"
    text = fmt(row["measured"])
    if row["ci_low"] is not None and row["ci_high"] is not None:
        half = (row["ci_high"] - row["ci_low"]) / 2
        text += f" [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}] ±{fmt(half)}"
    return text


def markdown_table(summary: dict) -> str:
    """One table, one row per criterion; the detail says which trait, position and null."""
    lines = [
        "| experiment | criterion | measured [95% CI] ±half-width | n | status | detail |",
        "|---|---|---|---|---|---|",
    ]
    for section in summary["sections"]:
        for row in section["criteria"]:
            cells = [
                section["title"],
                row["criterion"],
                _measured(row),
                row["n"] or "-",
                row["status"],
                row["detail"],
            ]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "Statuses:", *(f"- **{status}**: {meaning}" for status, meaning in STATUSES.items())]
    return "\n".join(lines) + "\n"


def html_table(summary: dict) -> str:
    """The table as an HTML fragment for the report's first page (details in smaller type)."""
    colour = {
        MET: "#1a7f37",
        NOT_MET: "#b42318",
        INCONCLUSIVE: "#b45309",
        NOT_MEASURABLE: "#6b7280",
        NOT_RUN: "#6b7280",
        NOT_MEASURED: "#6b7280",
    }
    out = [
        '<table style="font-size:12px;border-collapse:collapse;width:100%">',
        "<thead><tr><th align=left>criterion</th><th align=left>measured [95% CI] ±half-width</th>"
        "<th align=left>n</th><th align=left>status</th></tr></thead><tbody>",
    ]
    for section in summary["sections"]:
        out.append(
            f'<tr style="background:#f3f4f6"><td colspan=4><b>{html.escape(section["title"])}</b>: '
            f"{html.escape(section['status'])}</td></tr>"
        )
        for row in section["criteria"]:
            out.append(
                f"<tr><td>{html.escape(row['criterion'])}"
                f'<br><span style="font-size:10px;color:#4b5563">{html.escape(row["detail"])}</span></td>'
                f"<td>{html.escape(_measured(row))}</td><td>{html.escape(row['n'] or '-')}</td>"
                f'<td style="color:{colour[row["status"]]};font-weight:600">'
                f"{html.escape(row['status'])}</td></tr>"
            )
    out.append("</tbody></table>")
    out.append('<p style="font-size:11px;color:#4b5563">')
    out += [
        f'<b style="color:{colour[status]}">{html.escape(status)}</b>: {html.escape(meaning)}<br>'
        for status, meaning in STATUSES.items()
    ]
    out.append("</p>")
    return "\n".join(out) + "\n"
