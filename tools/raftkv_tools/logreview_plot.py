"""The timeline picture of `raftkv logs review --plot FILE.png` (needs matplotlib).

One row per node: follower / candidate / leader spans, the bounds of each leader's lease as a
band under the row, down time (stopped or crashed) hatched, SIGSTOP pauses, crashes and
restarts as markers; a partition shades every row. Time runs in seconds from the first line.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.patches import Patch

from raftkv_tools.logreview import Review

COLOURS = {
    "follower": "#d9d9d9",
    "candidate": "#f5a623",
    "leader": "#2f6fdf",
    "lease": "#2ca02c",
    "down": "#ffffff",
    "paused": "#9467bd",
    "partition": "#e8b4b4",
}
MARKERS = {
    "crash": ("X", "#d62728", "crash"),
    "kill-node": ("v", "#d62728", "fab kill-node"),
    "start": ("^", "#2ca02c", "start"),
    "stop": ("s", "#555555", "clean stop"),
}


def plot(result: Review, path: Path) -> None:
    nodes = sorted(result.collection.nodes)
    origin, finish = result.origin, result.finish
    row = {node: index for index, node in enumerate(reversed(nodes))}
    figure, axes = plt.subplots(figsize=(12, 1.1 * len(nodes) + 1.8), dpi=110)
    for span in result.spans:
        if span.kind == "partition":
            axes.axvspan(
                span.start - origin,
                span.end - origin,
                color=COLOURS["partition"],
                alpha=0.5,
                zorder=0,
            )
            axes.text(
                span.start - origin,
                len(nodes) - 0.35,
                f" partition {span.label}",
                fontsize=8,
                va="bottom",
                color="#8b0000",
            )
            continue
        if span.node not in row:
            continue
        base = row[span.node]
        width = max(span.end - span.start, 0.001)
        if span.kind == "lease":
            axes.broken_barh(
                [(span.start - origin, width)],
                (base - 0.38, 0.14),
                color=COLOURS["lease"],
                zorder=3,
            )
        elif span.kind == "paused":
            axes.broken_barh(
                [(span.start - origin, width)],
                (base - 0.2, 0.55),
                facecolor="none",
                edgecolor=COLOURS["paused"],
                hatch="//",
                linewidth=1.2,
                zorder=4,
            )
        elif span.kind == "down":
            axes.broken_barh(
                [(span.start - origin, width)],
                (base - 0.2, 0.55),
                facecolor="white",
                edgecolor="#888888",
                hatch="xx",
                linewidth=0.5,
                zorder=2,
            )
        else:
            axes.broken_barh(
                [(span.start - origin, width)],
                (base - 0.2, 0.55),
                color=COLOURS[span.kind],
                zorder=2,
            )
    seen: set[str] = set()
    for node, moment, label in result.marks:
        if label not in MARKERS or node is None or node not in row:
            continue
        marker, colour, legend = MARKERS[label]
        axes.plot(
            moment - origin,
            row[node] + 0.48,
            marker=marker,
            color=colour,
            markersize=8,
            linestyle="none",
            zorder=5,
            label=None if legend in seen else legend,
        )
        seen.add(legend)
    for ls in result.leaderships:
        if ls.node in row:
            axes.text(
                ls.start.time - origin,
                row[ls.node] + 0.08,
                f"T{ls.term}",
                fontsize=7,
                color="white",
                va="center",
                zorder=6,
            )
    for violation in result.violations:
        for line in violation.lines[:1]:
            axes.axvline(line.time - origin, color="#d62728", linestyle="--", linewidth=1)
    axes.set_yticks(list(row.values()), [f"node {node}" for node in row])
    axes.set_ylim(-0.6, len(nodes) - 0.1)
    axes.set_xlim(0, max(finish - origin, 0.001))
    axes.set_xlabel("seconds since the first line")
    verdict = (
        "invariants hold"
        if not result.violations
        else f"{len(result.violations)} violation(s) (dashed lines)"
    )
    axes.set_title(f"raftkv timeline: {result.collection.directory.name} — {verdict}")
    patches = [Patch(color=COLOURS[k], label=k) for k in ("follower", "candidate", "leader")]
    patches.append(Patch(color=COLOURS["lease"], label="lease (bounds)"))
    patches.append(Patch(facecolor="white", edgecolor="#888888", hatch="xx", label="down"))
    patches.append(
        Patch(facecolor="none", edgecolor=COLOURS["paused"], hatch="//", label="paused (SIGSTOP)")
    )
    if any(span.kind == "partition" for span in result.spans):
        patches.append(Patch(color=COLOURS["partition"], alpha=0.5, label="partition"))
    handles, _ = axes.get_legend_handles_labels()
    axes.legend(
        handles=patches + handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18),
        ncol=6,
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
