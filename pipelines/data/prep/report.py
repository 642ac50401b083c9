"""The table prep prints at the end: identities, frames, and what was skipped."""

from __future__ import annotations

from meshtalk.pipelines.data.prep.config import PrepConfig, Problem


def show_report(
    problems: list[Problem], records: list[dict], config: PrepConfig, seconds: float | None = None
) -> None:
    from rich.table import Table

    from meshtalk.pipelines.io.progress import console

    table = Table(title="meshtalk prep", title_justify="left")
    for column in ("identity", "segments", "frames", "skipped frames", "skipped segments"):
        if column == "identity":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right")
    for record in records:
        own = record["problems"]
        table.add_row(
            record["name"],
            str(len(record["segments"])),
            str(sum(s["frames"] for s in record["segments"])),
            str(sum(p["action"] == "frame skipped" for p in own)),
            str(sum(p["action"] == "segment skipped" for p in own)),
        )
    console.print(table)
    counts = {
        a: sum(p.action == a for p in problems)
        for a in ("warning", "frame skipped", "segment skipped", "identity skipped", "fatal")
    }
    summary = ", ".join(f"{n} {a}" for a, n in counts.items())
    frames = sum(s["frames"] for r in records for s in r["segments"])
    rate = f"; {frames / seconds:,.0f} frames/s" if seconds else ""
    console.print(f"problems: {summary}{rate}", markup=False, highlight=False)
    if seconds is not None:
        console.print(f"store: {config.output}", markup=False, highlight=False)
