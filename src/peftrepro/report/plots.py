"""Figures for the ablation tables: accuracy vs rank (Table 6) and per weight type (Table 5); and the
heatmaps of the §7 analyses (Figures 3 and 4, `plot_heatmaps`).

Ours and the paper's are drawn in separate rows of panels, each with its own y-axis: our small
model and GPT-3 175B live at different accuracy levels, and the question is whether the shapes
agree. Error bars are ± one standard deviation over seeds; a cell with one seed has none (a hollow
marker in Table 6, "n=1" over its bar in Table 5), so that it does not look like a cell of no spread.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

if TYPE_CHECKING:
    from peftrepro.report.cells import TableResult

def _subtitle(result: TableResult) -> str:
    profiles = sorted({r.profile for r in result.records}) or ["no records"]
    models = sorted({r.backbone for r in result.records}) or ["—"]
    return f"ours: {', '.join(models)}, profile {', '.join(profiles)}; paper: GPT-3 175B"


def plot_rank(result: TableResult, path: Path) -> Path:
    from peftrepro.report.specs import GPT3_TASKS, RANK_WEIGHTS, RANKS

    figure, axes = plt.subplots(2, len(GPT3_TASKS), figsize=(11, 7.5), squeeze=False)
    for column, task in enumerate(GPT3_TASKS):
        for weights in RANK_WEIGHTS:
            cells = [result.stats(f"{task.key}|{weights}", f"r={r}") for r in RANKS]
            means = [c["mean"] for c in cells]
            # a failed fit is no point of the method's curve: the line breaks there and a red × marks it
            learned = [math.nan if c["did_not_learn"] else m for m, c in zip(means, cells)]
            line = axes[0][column].errorbar(RANKS, learned, yerr=seed_error_bars(cells), marker="o", capsize=3,
                                            label=weights)
            one_seed = [(r, m) for r, m, c in zip(RANKS, means, cells) if c["n"] == 1]
            if one_seed:
                axes[0][column].scatter(*zip(*one_seed), marker="o", facecolors="white", zorder=3,
                                        edgecolors=line.lines[0].get_color())
            spiked = [(r, m) for r, m, c in zip(RANKS, means, cells)
                      if not c["did_not_learn"] and _spiked(result, f"{task.key}|{weights}", f"r={r}")]
            if spiked:  # it learned, but one seed's loss spiked on the way: its spread is not seed noise
                axes[0][column].scatter(*zip(*spiked), marker="o", s=160, facecolors="none", edgecolors="orange",
                                        linewidths=2, zorder=4)
            failed = [(r, m) for r, m, c in zip(RANKS, means, cells) if c["did_not_learn"]]
            if failed:  # marked where it scored, as its table names it
                axes[0][column].scatter(*zip(*failed), marker="x", s=80, color="red", zorder=4)
            axes[1][column].plot(RANKS, [c["paper"] for c in cells], marker="s", linestyle="--", label=weights)
        for row, who in enumerate(("ours", "paper")):
            axis = axes[row][column]
            axis.set_xscale("log", base=2)
            axis.set_xticks(RANKS, [str(r) for r in RANKS])
            axis.set_xlabel("LoRA rank r")
            axis.set_ylabel(f"{task.name} {task.unit}")
            axis.set_title(f"{task.name}: {who}")
            axis.grid(alpha=0.3)
            axis.legend(title="adapted weights", fontsize=8)
    figure.suptitle(f"Table 6: validation accuracy vs LoRA rank r\n{_subtitle(result)}\n"
                    "ours: mean ± std over seeds; hollow: one seed; red ×: did not learn; orange ring: a seed's loss spiked")
    return _save(figure, path)


def plot_weight_type(result: TableResult, path: Path) -> Path:
    from peftrepro.report.specs import GPT3_TASKS, WEIGHT_TYPE_COLUMNS

    labels = [_wrap_weights(w) + f"\nr={r}" for w, r in WEIGHT_TYPE_COLUMNS]
    positions = range(len(WEIGHT_TYPE_COLUMNS))
    figure, axes = plt.subplots(2, len(GPT3_TASKS), figsize=(13, 7.5), squeeze=False)
    for column, task in enumerate(GPT3_TASKS):
        cells = [result.stats(task.key, w) for w, _ in WEIGHT_TYPE_COLUMNS]
        errors = seed_error_bars(cells)
        axes[0][column].bar(positions, [c["mean"] for c in cells], yerr=errors, capsize=3,
                            color=["tab:gray" if c["did_not_learn"] else "tab:blue" for c in cells],
                            hatch=["//" if c["did_not_learn"] else "" for c in cells])
        axes[1][column].bar(positions, [c["paper"] for c in cells], color="tab:gray")
        for row, who in enumerate(("ours", "paper")):
            axis = axes[row][column]
            axis.set_xticks(list(positions), labels, fontsize=8)
            axis.set_ylabel(f"{task.name} {task.unit}")
            axis.set_title(f"{task.name}: {who}")
            axis.grid(axis="y", alpha=0.3)
            _zoom_to_bars(axis, errors if row == 0 else ())
        _label_seeds(axes[0][column], cells, errors, [_spiked(result, task.key, w) for w, _ in WEIGHT_TYPE_COLUMNS])
    figure.suptitle("Table 5: adapted weight matrices at an equal budget (rank × #matrices constant)\n"
                    f"{_subtitle(result)}\nours: mean ± std over seeds; gray, hatched: did not learn")
    return _save(figure, path)


def seed_error_bars(cells: Sequence[Mapping[str, Any]]) -> list[float]:
    """Error bars: the std over seeds, none (NaN) where fewer than two seeds ran."""
    return [c["std"] if c["n"] >= 2 else float("nan") for c in cells]


def _spiked(result: TableResult, row: str, column: str) -> bool:
    """Whether a seed of the cell came through a loss spike (records.Record.loss_spike)."""
    return any(r.loss_spike for r in result.cell_records(row, column))


def _label_seeds(axis: plt.Axes, cells: Sequence[Mapping[str, Any]], errors: Sequence[float],
                 spiked: Sequence[bool]) -> None:
    """How many seeds each bar has ("n=2" above its error bar, with "did not learn" or "loss spike" where
    its table says so), and "no run" where there is no bar."""
    bottom = axis.get_ylim()[0]
    for x, (cell, error, spike) in enumerate(zip(cells, errors, spiked)):
        if cell["n"]:
            top = cell["mean"] + (0.0 if math.isnan(error) else error)
            note = ",\ndid not learn" if cell["did_not_learn"] else ",\nloss spike" if spike else ""
            axis.text(x, top, f"n={cell['n']}{note}", ha="center", va="bottom", fontsize=7)
        else:
            axis.text(x, bottom, "no run", ha="center", va="bottom", fontsize=7, color="gray")


def _wrap_weights(weights: str) -> str:
    """Two weight names per line, so that neighbouring tick labels do not overlap."""
    names = weights.split(",")
    return ",\n".join(",".join(names[i:i + 2]) for i in range(0, len(names), 2))


def _zoom_to_bars(axis: plt.Axes, errors: Sequence[float] = ()) -> None:
    """Start the y-axis near the lowest bar or error bar, so that differences of a point stay visible.

    Error bars count: a bar's spread must be seen whole, not cut off at the axis.
    """
    spans = []
    for patch, error in itertools.zip_longest(axis.patches, errors, fillvalue=0.0):
        height, error = patch.get_height(), (0.0 if math.isnan(error) else error)
        if not math.isnan(height):
            spans.append((height - error, height + error))
    if spans:
        low, high = min(s[0] for s in spans), max(s[1] for s in spans)
        pad = max((high - low) * 0.5, 0.5)
        bottom = max(0.0, low - pad)
        axis.set_ylim(bottom, high + pad)
        if bottom > 0:
            axis.set_title(f"{axis.get_title()} (y-axis starts at {bottom:.3g})")


def plot_heatmaps(panels: Sequence[Sequence[tuple[str, Any]]], path: Path) -> Path:
    """The §7 figures (Figures 3 and 4): a grid of φ(i, j) heatmaps, one (title, matrix) per panel, i
    down and j across counted from 1, on one colour scale from 0 (orthogonal) to 1 (contained)."""
    columns = max(len(row) for row in panels)
    figure, axes = plt.subplots(len(panels), columns, figsize=(4.2 * columns, 3.4 * len(panels)), squeeze=False)
    for row_axes, row in zip(axes, panels):
        for axis, (title, phi) in zip(row_axes, row):
            image = axis.imshow(phi, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", interpolation="nearest",
                                extent=(0.5, phi.shape[1] + 0.5, phi.shape[0] + 0.5, 0.5))
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("j")
            axis.set_ylabel("i")
            for ticks in (axis.xaxis, axis.yaxis):
                ticks.set_major_locator(MaxNLocator(integer=True))
        for axis in row_axes[len(row):]:
            axis.set_visible(False)
        figure.colorbar(image, ax=row_axes[len(row) - 1], label="φ")
    return _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


PLOTS: dict[str, Callable[[TableResult, Path], Path]] = {
    "table_rank": plot_rank,
    "table_weight_type": plot_weight_type,
}


def figure_name(table: str) -> str | None:
    """The file name of the table's figure, written beside its page; None if it has none."""
    return f"{table}.png" if table in PLOTS else None


def plot(result: TableResult, out_dir: Path) -> list[Path]:
    """The figure(s) for this table, if it has any: `<out_dir>/<table>.png`."""
    figure = figure_name(result.spec.name)
    return [] if figure is None else [PLOTS[result.spec.name](result, out_dir / figure)]
