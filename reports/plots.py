"""Figures (matplotlib, Agg backend; imported only by the report code): accuracy vs bit-width
per model, ablation dot plot, accuracy vs quantization time. Each is written as PDF and PNG,
sized for a paper's full text width (7 in) with 8-9 pt text, fonts embedded as TrueType."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec

import pandas as pd

from reports.tables import _bits_order, device_name, method_name, model_name

WIDTH = 7.0  # inches: a paper's text width, so that \includegraphics[width=\textwidth] keeps 8-9 pt
PANEL_MIN = 2.2  # inches: the narrowest panel whose tick labels and 8 pt title still fit
_WIDTH: contextvars.ContextVar[float] = contextvars.ContextVar("figure_width", default=WIDTH)


@contextlib.contextmanager
def figure_width(inches: float):
    """Draw the figures ``inches`` wide inside the block (default :data:`WIDTH`, a text width;
    ~3.3-3.5 for one column of a two-column paper), so that they are included at 100% and keep
    their 8-9 pt text: panels wrap into more rows, and a legend right of a plot moves below it
    where the width is too narrow for both."""
    token = _WIDTH.set(float(inches))
    try:
        yield
    finally:
        _WIDTH.reset(token)


def _cols(n: int, most: int = 3, width: float | None = None) -> int:
    """Panels side by side: ``n``, at most ``most``, as many as are at least PANEL_MIN wide."""
    w = _WIDTH.get() if width is None else width
    return max(1, min(n, most, int(w / PANEL_MIN + 1e-9)))  # 6.6 // 2.2 is 2.0
# Type 3 fonts (matplotlib's default in PDF/PS) are refused by IEEE and ACM; 42 embeds TrueType
_RC = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8,
       "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8}
# Okabe-Ito; the last method of a grid (its own, MGRQ) gets the vivid vermillion, and yellow, the
# faintest on white, comes last of the others
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#F0E442", "#D55E00"]
MARKERS = "os^DvPX*<>"  # 10, not 8: a method past the 8th colour gets another marker than its colour-mate
LINES = ["-", "-.", ":"]  # not "--": that is Full Prec.'s
STD_NOTE = "error bars: ±1 sample std over seeds"

P = ParamSpec("P")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styled(draw: Callable[P, list[Path]]) -> Callable[P, list[Path]]:
    """``draw`` under the paper settings, for its figure only (not the process's rcParams)."""

    @functools.wraps(draw)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> list[Path]:
        with _plt().rc_context(_RC):
            return draw(*args, **kwargs)

    return wrapped


PAGE_HEIGHT = 9.0  # inches: about a paper's text height
DPI = 150


def too_tall(paths: list[Path]) -> list[tuple[str, float]]:
    """``(stem, inches)`` of the figures among ``paths`` (their PNGs) taller than a page's text."""
    from PIL import Image

    out = []
    for p in paths:
        if p.suffix == ".png":
            with Image.open(p) as im:
                inches = im.size[1] / DPI
            if inches > PAGE_HEIGHT:
                out.append((p.stem, inches))
    return out


def _save(fig, dest: Path, stem: str) -> list[Path]:
    out = []
    for ext in ("pdf", "png"):
        p = dest / f"{stem}.{ext}"
        fig.savefig(p, dpi=DPI)  # no bbox_inches="tight": the figure keeps its designed width
        out.append(p)
    _plt().close(fig)
    return out


def _colours(n: int) -> list:
    """``n`` distinct colours, none grey (grey is Full Prec.'s): Okabe-Ito (colour-blind safe) up
    to 8, the last (a grid's own method comes last) always vermillion; beyond that no palette is,
    and tab20 without its greys, then Okabe-Ito, keep up to 26 apart (the ablation suite has 11:
    with a 10-colour cycle the 11th, MGRQ, took the 1st's)."""
    if n <= len(OKABE_ITO):  # the last one vermillion, however many there are
        return OKABE_ITO[:n - 1] + OKABE_ITO[-1:] if n else []
    return _tab20(n)


def _tab20(n: int) -> list:
    """``n`` colours of tab20 without its greys, then Okabe-Ito, cycling."""
    cmap = _plt().get_cmap("tab20")
    tab = [cmap(i) for i in range(20) if i not in (14, 15)] + OKABE_ITO
    return [tab[i % len(tab)] for i in range(n)]


_MAIN: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("main_rows", default=())


@contextlib.contextmanager
def main_rows(rows: list[str]):
    """Inside the block, ``rows`` (a suite's ``report.main``) take the colours first: up to 8 of
    them keep Okabe-Ito with the last in vermillion however many other rows the grid has; the
    others (ablation variants) take tab20's."""
    token = _MAIN.set(tuple(rows))
    try:
        yield
    finally:
        _MAIN.reset(token)


def _styles(every: list[str]) -> dict[str, dict[str, Any]]:
    """Colour, marker and line style of each row of ``every`` (all the report's rows, so that a
    row has one style in every figure): the main rows (:func:`main_rows`, else all) first, in
    :func:`_colours`; the marker and, past the 8th row, the line style tell rows apart where
    colour cannot (colour-blind readers, print)."""
    main = [n for n in every if n in _MAIN.get()] or list(every)
    rest = [n for n in every if n not in main]
    # the others go on in tab20 after the main rows' colours (from its start when those are Okabe-Ito)
    skip = len(main) if len(main) > len(OKABE_ITO) else 0
    colours = _colours(len(main)) + _tab20(skip + len(rest))[skip:]
    return {n: {"color": c, "marker": MARKERS[i % len(MARKERS)], "ls": LINES[i // 8 % len(LINES)]}
            for i, (n, c) in enumerate(zip(main + rest, colours))}


def _yerr(s: pd.DataFrame) -> pd.Series | None:
    """The std of the rows with more than one seed (NaN elsewhere: no bar, no cap), or None when
    no row has one, so that neither the plot nor the legend shows an error bar."""
    several = s["n"] > 1
    return s["std"].where(several) if several.any() else None


def _grid(n: int) -> tuple[int, int]:
    cols = _cols(n)
    return math.ceil(n / cols), cols


def _legend_entries(axes, order: list[str] | None = None) -> tuple[list, list[str]]:
    """The legend handles and labels of all ``axes``, each label once (a panel may lack methods
    whose cells of that model all failed), in ``order`` (labels not in it last), else in order of
    first appearance."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    rank = {lab: i for i, lab in enumerate(order or [])}
    labels = sorted(seen, key=lambda lab: rank.get(lab, len(rank)))
    return [seen[lab] for lab in labels], labels


def _legend_below(fig, axes, order: list[str] | None, note: bool) -> None:
    """The figure's legend under the panels (none when nothing was drawn), titled with what the
    error bars are when any are drawn."""
    handles, labels = _legend_entries(axes, order)
    if labels:
        _fitted_legend(fig, handles, labels, STD_NOTE if note else None)


def _fitted_legend(fig, handles: list, labels: list[str], title: str | None) -> None:
    """The figure's legend below its panels, in as many columns (at most 5) as fit its width."""
    renderer = fig.canvas.get_renderer()
    for ncol in range(min(5, len(labels)), 0, -1):
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, title=title)
        if ncol == 1 or legend.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return
        legend.remove()


@_styled
def accuracy_vs_bits(agg: pd.DataFrame, models: list[str], names: list[str], dest: Path,
                     order: list[str] | None = None) -> list[Path]:
    """One panel per model: top-1 (mean over seeds, error bars = std where there are several)
    vs bit-width, one line per method, each a little beside the others (methods with equal
    accuracy would hide each other's markers); the FP accuracy as a grey dashed line. With
    ``order`` (all the report's rows), a method has the colour and marker it has in the others."""
    plt = _plt()
    runs = agg[(agg["source"] == "run") & (agg["n"] > 0)]
    bits = _bits_order(list(runs["bits"]))
    every = list(dict.fromkeys([*(order or []), *names]))
    styles = _styles(every)
    rows, cols = _grid(len(models))
    fig, axes = plt.subplots(rows, cols, figsize=(_WIDTH.get(), 2.2 * rows + 0.6), squeeze=False,
                             layout="constrained")
    bars = False
    for ax, m in zip(axes.flat, models):
        sub = runs[runs["model"] == m]
        for i, n in enumerate(names):  # a method keeps its style in every panel, drawn or not
            s = sub[sub["name"] == n].set_index("bits").reindex(bits)
            if s["mean"].notna().any():
                style = styles[n]
                yerr = _yerr(s)
                bars |= yerr is not None
                dodge = (i - (len(names) - 1) / 2) * min(0.05, 0.4 / len(names))  # equal values stay apart
                ax.errorbar([j + dodge for j in range(len(bits))], s["mean"], yerr=yerr, capsize=2, ms=5, lw=1.2,
                            label=method_name(n), **style)
        fp = sub["fp"].dropna()
        if len(fp):
            ax.axhline(float(fp.mean()), color="gray", ls="--", lw=1, label="Full Prec.")
        ax.set_title(model_name(m))
        ax.set_xticks(range(len(bits)), [b.replace("A", "/A") for b in bits])
        if bits:
            ax.set_xlim(-0.5, len(bits) - 0.5)
        ax.set_xlabel("bit-width (W/A)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    _legend_below(fig, axes.flat, [method_name(n) for n in names], bars)
    return _save(fig, dest, "acc_vs_bits")


@_styled
def ablation_bars(agg: pd.DataFrame, models: list[str], rows_in: list[str], dest: Path,
                  bits_pref: list[str] | None = None, order: list[str] | None = None) -> list[Path]:
    """A dot plot (a point per variant, side by side per model; one panel per bit-width, each on
    the y range of its own points, so that the variants' differences at a high bit-width are not
    squeezed by a lower one's range): points need no zero baseline, so unlike bars on a cut axis
    their lengths do not exaggerate the differences. Error bars = std over seeds, where there are several. With
    ``order`` (all the report's rows, as :func:`accuracy_vs_bits` gets them), a variant has the
    colour and marker it has there."""
    plt = _plt()
    runs = agg[(agg["source"] == "run") & agg["name"].isin(rows_in) & (agg["n"] > 0) & agg["model"].isin(models)]
    bits = _bits_order(list(runs["bits"]), bits_pref)
    cols = _cols(max(1, len(bits)))
    rows = math.ceil(max(1, len(bits)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(_WIDTH.get(), 2.0 * rows + 0.6), squeeze=False,
                             layout="constrained")
    step = 0.6 / max(1, len(rows_in))
    every = list(dict.fromkeys([*(order or []), *rows_in]))
    styles = _styles(every)
    bars = False
    for ax, b in zip(axes.flat, bits):
        sub = runs[runs["bits"] == b]
        for i, n in enumerate(rows_in):
            s = sub[sub["name"] == n].set_index("model").reindex(models)
            if s["mean"].notna().any():
                yerr = _yerr(s)
                bars |= yerr is not None
                xs = [j + (i - (len(rows_in) - 1) / 2) * step for j in range(len(models))]
                ax.errorbar(xs, s["mean"], yerr=yerr, capsize=2, ms=5, label=method_name(n),
                            **(styles[n] | {"ls": "none"}))
        ax.set_xticks(range(len(models)), [model_name(m) for m in models])
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_title(b.replace("A", "/A"))
        ax.grid(axis="y", alpha=0.3)
        if len(sub):  # its points and error bars with a margin (a point at 100 is not cut in half)
            std = sub["std"].where(sub["n"] > 1).fillna(0)
            lo, hi = float((sub["mean"] - std).min()), float((sub["mean"] + std).max())
            pad = max(0.5, 0.1 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), hi + pad)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 (%)")
    for ax in list(axes.flat)[len(bits):]:
        ax.set_visible(False)
    _legend_below(fig, axes.flat, [method_name(n) for n in rows_in], bars)
    return _save(fig, dest, "ablation")


def _tick_125(x: float, down: bool) -> float:
    """The nearest of 1, 2, 5 x 10^k below (``down``) or above ``x`` (> 0)."""
    k = math.floor(math.log10(x))
    ticks = [m * 10.0**e for e in (k - 1, k, k + 1) for m in (1.0, 2.0, 5.0)]
    return max(v for v in ticks if v <= x) if down else min(v for v in ticks if v >= x)


@_styled
def accuracy_vs_time(agg: pd.DataFrame, dest: Path, order: list[str] | None = None,
                     models: list[str] | None = None) -> list[Path]:
    """Top-1 vs quantization wall time (log scale), one panel per model (``models``, else those in
    ``agg``; models differ in accuracy and time alike, so one panel would leave the reader to
    guess which cluster is which): colour = method, marker = bit-width. When the cells ran on
    different devices, GPU points are hollow (times of different devices are not comparable).
    The legend, right of the top right panel so that it hides no point, has one entry per method
    (in ``order``, the grid's; when every drawn method is in it, each has the colour it has in
    the accuracy vs bit-width figure), per bit-width and, when they are mixed, per device. The
    three kinds of key cannot be taken for one another: a method's is a bar of its colour, a
    bit-width's a hollow black marker of its shape, a device's a black circle (a shape no
    bit-width has), filled or hollow."""
    from matplotlib.lines import Line2D

    plt = _plt()
    runs = agg[(agg["source"] == "run") & (agg["n"] > 0)].dropna(subset=["quantize_s", "mean"])
    model = runs["model"] if "model" in runs else pd.Series("", index=runs.index)
    panels = [m for m in (models or list(dict.fromkeys(model))) if (model == m).any()] or [""]
    width = _WIDTH.get()
    beside = width >= 2 * PANEL_MIN + 1.6  # room for the legend right of the panels (~1.6 in), else below them
    # at most 2 panels side by side: 3 log axes beside a legend ran their tick labels together
    cols = _cols(len(panels), 2, width - 1.6 if beside else width)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width, (3.0 if rows == 1 else 2.4 * rows + 0.4)), squeeze=False,
                             layout="constrained")
    markers = "s^Dv<>PX"
    bits = _bits_order(list(runs["bits"])) if len(runs) else []
    every = list(dict.fromkeys([*(order or []), *runs["name"]]))
    colour = {n: st["color"] for n, st in _styles(every).items()}  # as accuracy_vs_bits has them for ``order``
    names = [n for n in every if (runs["name"] == n).any()]
    device = runs["device"].fillna("?") if "device" in runs else pd.Series("?", index=runs.index)
    devices = sorted(set(device))
    hollow = {d: len(devices) > 1 and "cuda" in d for d in devices}
    for ax, m in zip(axes.flat, panels):
        here = runs[model == m] if m else runs
        for n in names:
            for j, b in enumerate(bits):
                for d in devices:
                    s = here[(here["name"] == n) & (here["bits"] == b) & (device[here.index] == d)]
                    if len(s):
                        ax.scatter(s["quantize_s"].clip(lower=1e-3), s["mean"], marker=markers[j % len(markers)],
                                   facecolors="none" if hollow[d] else colour[n], edgecolors=colour[n])
        _log_time_axis(ax, here["quantize_s"])
        if m:
            ax.set_title(model_name(m))
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    # under the lowest panel of each column (a figure-wide label would meet a legend below); on two
    # lines where a panel is narrower than the label's one line
    text = "quantization time per model" + (" " if (width - 1.6 * beside) / cols >= 3.0 else "\n") + "(s, log scale)"
    for c in range(cols):
        [*axes[:, c][: math.ceil((len(panels) - c) / cols)]][-1].set_xlabel(text)
    if names:
        def key(label: str, marker: str, fill: bool = True) -> Line2D:
            return Line2D([], [], ls="", marker=marker, color="black", markerfacecolor=None if fill else "none",
                          label=label)

        handles = [Line2D([], [], color=colour[n], lw=5, label=method_name(n))
                   for n in names]
        # a bit-width's key is hollow: filled, it would look like a point of the black method
        handles += [key(b.replace("A", "/A"), markers[j % len(markers)], fill=False) for j, b in enumerate(bits)]
        if len(devices) > 1:
            handles += [key(device_name(d), "o", fill=not hollow[d]) for d in devices]
        if beside:  # a column holds ~12 keys at this height: more would run off the figure, cut
            axes[0, min(cols, len(panels)) - 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                                                       frameon=False, ncol=math.ceil(len(handles) / (12 * rows)))
        else:
            _fitted_legend(fig, handles, [str(h.get_label()) for h in handles], None)
    return _save(fig, dest, "acc_vs_time")


def _log_time_axis(ax, t: pd.Series) -> None:
    """A log x axis from a 1-2-5 tick below the fastest point to one above the slowest, both ends
    labelled; ticks at 1-2-5 over up to two decades, at the decades beyond."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    lo = hi = 1.0
    if len(t):
        t = t.clip(lower=1e-3)
        lo, hi = _tick_125(float(t.min()) / 1.15, down=True), _tick_125(float(t.max()) * 1.15, down=False)
        ax.set_xlim(lo, hi)
    # 1-2-5 ticks over up to two decades; beyond, their labels run together: decades only
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if hi / lo <= 100 else (1.0,)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
