"""Figures (matplotlib, Agg backend; imported only by the report code): accuracy vs bit-width
per model, ablation bars, accuracy vs quantization time. Each is written as PDF and PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from reports.tables import _bits_order, device_name, method_name, model_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, dest: Path, stem: str) -> list[Path]:
    out = []
    for ext in ("pdf", "png"):
        p = dest / f"{stem}.{ext}"
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    _plt().close(fig)
    return out


def _colours(n: int) -> list:
    """``n`` distinct colours: matplotlib's 10-colour cycle, or tab20 for 11 to 20 methods (the
    ablation suite has 11: with the 10-colour cycle the 11th, MGRQ, took the 1st's colour)."""
    plt = _plt()
    if n <= 10:
        return [f"C{i}" for i in range(n)]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % 20) for i in range(n)]


def _grid(n: int) -> tuple[int, int]:
    cols = min(4, n)
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


def accuracy_vs_bits(agg: pd.DataFrame, models: list[str], names: list[str], dest: Path) -> list[Path]:
    """One panel per model: top-1 (mean over seeds, error bars = std) vs bit-width, one line
    per method; the FP accuracy as a dashed line."""
    plt = _plt()
    runs = agg[(agg["source"] == "run") & (agg["n"] > 0)]
    bits = _bits_order(list(runs["bits"]))
    rows, cols = _grid(len(models))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    colours = _colours(len(names))
    for ax, m in zip(axes.flat, models):
        sub = runs[runs["model"] == m]
        for i, n in enumerate(names):  # a method keeps its colour in every panel, drawn or not
            s = sub[sub["name"] == n].set_index("bits").reindex(bits)
            if s["mean"].notna().any():
                ax.errorbar(range(len(bits)), s["mean"], yerr=s["std"].fillna(0), marker="o",
                            capsize=2, label=method_name(n), color=colours[i])
        fp = sub["fp"].dropna()
        if len(fp):
            ax.axhline(float(fp.mean()), color="gray", ls="--", lw=1, label="Full Prec.")
        ax.set_title(model_name(m))
        ax.set_xticks(range(len(bits)), [b.replace("A", "/A") for b in bits])
        ax.set_xlabel("bit-width (W/A)")
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    handles, labels = _legend_entries(axes.flat, [method_name(n) for n in names])
    if labels:  # none when no cell of any model finished
        fig.tight_layout()  # then the legend below the panels (bbox_inches="tight" makes room)
        fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    else:
        fig.tight_layout()
    return _save(fig, dest, "acc_vs_bits")


def ablation_bars(agg: pd.DataFrame, models: list[str], rows_in: list[str], dest: Path,
                  bits_pref: list[str] | None = None) -> list[Path]:
    """Grouped bars: one group per model, one bar per variant; one panel per bit-width."""
    plt = _plt()
    runs = agg[(agg["source"] == "run") & agg["name"].isin(rows_in) & (agg["n"] > 0)]
    bits = _bits_order(list(runs["bits"]), bits_pref)
    panel_w = max(4.0, 0.45 * len(models) * len(rows_in) + 1.5)
    fig, axes = plt.subplots(1, max(1, len(bits)), figsize=(panel_w * max(1, len(bits)), 3.4), squeeze=False)
    width = 0.8 / max(1, len(rows_in))
    for ax, b in zip(axes.flat, bits):
        sub = runs[(runs["bits"] == b) & runs["model"].isin(models)]
        for i, n in enumerate(rows_in):
            s = sub[sub["name"] == n].set_index("model").reindex(models)
            xs = [j + (i - (len(rows_in) - 1) / 2) * width for j in range(len(models))]
            ax.bar(xs, s["mean"].fillna(0), width, yerr=s["std"].fillna(0), capsize=2, label=method_name(n))
        ax.set_xticks(range(len(models)), [model_name(m) for m in models])
        ax.set_title(b.replace("A", "/A"))
        ax.set_ylabel("top-1 (%)")
        if len(sub):  # 10 points below the lowest bar; the top over the highest error bar, not past 100
            top = float((sub["mean"] + sub["std"].fillna(0)).max())
            ax.set_ylim(max(0.0, float(sub["mean"].min()) - 10), min(100.0, top + 2.0))
        ax.grid(axis="y", alpha=0.3)
    handles, labels = _legend_entries(axes.flat)
    fig.tight_layout()
    if labels:  # no bars when no cell of these rows finished; below the panels, off the bars
        fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    return _save(fig, dest, "ablation")


def _tick_125(x: float, down: bool) -> float:
    """The nearest of 1, 2, 5 x 10^k below (``down``) or above ``x`` (> 0)."""
    k = math.floor(math.log10(x))
    ticks = [m * 10.0**e for e in (k - 1, k, k + 1) for m in (1.0, 2.0, 5.0)]
    return max(v for v in ticks if v <= x) if down else min(v for v in ticks if v >= x)


def accuracy_vs_time(agg: pd.DataFrame, dest: Path, order: list[str] | None = None) -> list[Path]:
    """Top-1 vs quantization wall time (log scale): colour = method, marker = bit-width. When
    the cells ran on different devices, GPU points are hollow (times of different devices are
    not comparable). The legend, right of the plot so that it hides no point, has one entry per
    method (in ``order``, the grid's; when every drawn method is in it, each has the colour it
    has in the accuracy vs bit-width figure), per bit-width and, when they are mixed, per device."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    plt = _plt()
    runs = agg[(agg["source"] == "run") & (agg["n"] > 0)].dropna(subset=["quantize_s", "mean"])
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    markers = "osD^vP*X"
    bits = _bits_order(list(runs["bits"])) if len(runs) else []
    every = list(dict.fromkeys([*(order or []), *runs["name"]]))
    colour = dict(zip(every, _colours(len(every))))  # the palette accuracy_vs_bits uses for ``order``
    names = [n for n in every if (runs["name"] == n).any()]
    device = runs["device"].fillna("?") if "device" in runs else pd.Series("?", index=runs.index)
    devices = sorted(set(device))
    hollow = {d: len(devices) > 1 and "cuda" in d for d in devices}
    for n in names:
        for j, b in enumerate(bits):
            for d in devices:
                s = runs[(runs["name"] == n) & (runs["bits"] == b) & (device == d)]
                if len(s):
                    ax.scatter(s["quantize_s"].clip(lower=1e-3), s["mean"], marker=markers[j % len(markers)],
                               facecolors="none" if hollow[d] else colour[n], edgecolors=colour[n])
    ax.set_xscale("log")
    if len(runs):  # from a 1-2-5 tick below the fastest point to one above the slowest: both ends labelled
        t = runs["quantize_s"].clip(lower=1e-3)
        ax.set_xlim(_tick_125(float(t.min()) / 1.15, down=True), _tick_125(float(t.max()) * 1.15, down=False))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("quantization time per model (s, log scale)")
    ax.set_ylabel("top-1 (%)")
    ax.grid(alpha=0.3)
    if names:
        def key(label: str, marker: str = "o", colour: Any = "gray", fill: bool = True) -> Line2D:
            return Line2D([], [], ls="", marker=marker, markeredgecolor=colour,
                          markerfacecolor=colour if fill else "none", label=label)

        handles = [key(method_name(n), colour=colour[n]) for n in names]
        handles += [key(b.replace("A", "/A"), markers[j % len(markers)]) for j, b in enumerate(bits)]
        if len(devices) > 1:
            handles += [key(device_name(d), fill=not hollow[d]) for d in devices]
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, dest, "acc_vs_time")
