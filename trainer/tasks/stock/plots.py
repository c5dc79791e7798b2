"""The report's PNG figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot and no global backend switch: a figure here touches no process-wide state, so
drawing inside a training process (or a test) is safe. Each function takes plain lists,
writes one PNG and returns its path; ``report.py`` prepares the data and imports this module
only when it writes a report, so importing the trainer never loads matplotlib.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Series = tuple[list[float], list[float]]  # x values, y values
DPI = 100


def _axes(title: str, xlabel: str, ylabel: str, size: tuple[float, float] = (7.0, 4.2)):
    fig = Figure(figsize=size, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def step_lines(path: Path, title: str, lines: dict[str, Series],
               points: dict[str, Series] | None = None, ylabel: str = "value") -> Path:
    """Lines over training steps, plus optional markers (e.g. periodic evaluations)."""
    fig, ax = _axes(title, "step", ylabel)
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, label=name, linewidth=1.2)
    for name, (xs, ys) in (points or {}).items():
        ax.plot(xs, ys, "o", label=name, markersize=5)
    if lines or points:
        ax.legend(fontsize=8)
    return _save(fig, path)


def against_diagonal(path: Path, title: str, xlabel: str, ylabel: str,
                     curves: dict[str, Series], diagonal: str, style: str = "-") -> Path:
    """Curves in the unit square beside the diagonal ``diagonal`` names (ROC: chance;
    reliability: perfect calibration). Legend entries are the keys of ``curves``."""
    fig, ax = _axes(title, xlabel, ylabel, size=(5.0, 5.0))
    ax.plot([0, 1], [0, 1], ":", color="grey", label=diagonal)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, style, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def confusion(path: Path, title: str, rows: list[str], cols: list[str],
              counts: list[list[int]]) -> Path:
    """A count matrix, true labels down, predictions across, each cell annotated."""
    fig, ax = _axes(title, "predicted", "true", size=(5.0, 3.6))
    ax.grid(False)
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    top = max((max(r) for r in counts), default=0)
    for i, row in enumerate(counts):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center",
                    color="white" if top and n > top / 2 else "black")
    return _save(fig, path)
