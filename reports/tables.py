"""Paper-style tables from the aggregated frame: the main table (RepQ-ViT/MGRQ style: models as
columns, methods as rows grouped by bit-width, the full-precision row first, the best value of
each column in bold, mean +- std over seeds), the ablation table (variants x models, with the
average over models), the paired table (one method minus each other one, paired by seed, with
95% intervals) and the label-to-label comparison. Each renders to LaTeX (booktabs) and
Markdown from the same rows.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mgrq.records import short_sha

MODEL_NAMES = {
    "vit_small_patch16_224": "ViT-S", "vit_base_patch16_224": "ViT-B",
    "deit_tiny_patch16_224": "DeiT-T", "deit_small_patch16_224": "DeiT-S",
    "deit_base_patch16_224": "DeiT-B", "swin_tiny_patch4_window7_224": "Swin-T",
    "swin_small_patch4_window7_224": "Swin-S", "swin_base_patch4_window7_224": "Swin-B",
    "tiny_vit": "tiny ViT", "tiny_deit": "tiny DeiT", "tiny_swin": "tiny Swin",
}
METHOD_NAMES = {
    "fp": "Full Prec.", "percentile": "Percentile", "repq_vit": "RepQ-ViT", "ptq4vit": "PTQ4ViT",
    "base_ptq": "Base PTQ", "brecq": "BRECQ", "qdrop": "QDrop", "mgrq": "MGRQ",
    "mgrq_obwr": "MGRQ: OBWR only", "mgrq_obwr_global": "MGRQ: OBWR + EBGS",
    "mgrq_obwr_local": "MGRQ: OBWR + IBLS", "mgrq_sum_fusion": "MGRQ: sum fusion",
}


def model_name(m: str) -> str:
    return MODEL_NAMES.get(m, m)


_ROW_NAMES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("row_names", default=None)
_RUN_IN_CAPTIONS: contextvars.ContextVar[bool] = contextvars.ContextVar("run_in_captions", default=True)


@contextlib.contextmanager
def row_names():
    """A block in which :func:`use_row_names` sets how rows print (a suite's ``report.names``,
    before :data:`METHOD_NAMES`) and :func:`use_run_in_captions` whether captions name the run;
    both end with it."""
    token, token_run = _ROW_NAMES.set({}), _RUN_IN_CAPTIONS.set(True)
    try:
        yield
    finally:
        _ROW_NAMES.reset(token)
        _RUN_IN_CAPTIONS.reset(token_run)


def use_run_in_captions(on: bool) -> None:
    """The captions name the suite and label they came from (``suite S (L)``, the default: a
    report is first read beside others) or, ``on=False``, do not (a paper's), until the enclosing
    :func:`row_names` block ends."""
    _RUN_IN_CAPTIONS.set(on)


def _run_of(suite: str, label: str) -> str:
    return f", suite {suite} ({label})" if _RUN_IN_CAPTIONS.get() else ""


def use_row_names(names: Any) -> None:
    """Rows print as ``names`` (a mapping of row name to printed name; anything else is ignored,
    e.g. a hand-edited ``suite.json``) says until the enclosing :func:`row_names` block ends."""
    ok = isinstance(names, dict) and all(isinstance(v, str) and v for v in names.values())
    _ROW_NAMES.set(dict(names) if ok else {})


def method_name(m: str) -> str:
    return (_ROW_NAMES.get() or {}).get(m) or METHOD_NAMES.get(m, m)


def device_name(d: str) -> str:
    """A frame's device column as printed: ``cpu`` -> ``CPU``, ``cuda`` -> ``GPU``,
    ``cpu+cuda`` -> ``CPU+GPU``."""
    return d.upper().replace("CUDA", "GPU")


_GREEK = {ch: rf"$\{name}$" for ch, name in zip("αβγδεζηθικλμνξπρςστυφχψωΓΔΘΛΞΠΣΥΦΨΩ", (
    "alpha", "beta", "gamma", "delta", "varepsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu",
    "xi", "pi", "rho", "varsigma", "sigma", "tau", "upsilon", "varphi", "chi", "psi", "omega",  # ε, φ: the text shapes
    "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Upsilon", "Phi", "Psi", "Omega"), strict=True)}
_GREEK |= dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΧο", "ABEZHIKMNOPTXo", strict=True))  # printed as Latin letters: LaTeX has no command
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
        "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
        "±": r"$\pm$", "†": r"$^\dagger$", "−": r"$-$", "→": r"$\to$", "…": r"\dots{}", "×": r"$\times$"} | _GREEK


def tex(s: str) -> str:
    """Escape LaTeX specials in plain text; Greek letters (a row name's "IBLS (σ)") as math, which
    pdflatex's default fonts have (the letters themselves stop it). A leading ``[`` gets ``{}``
    before it: a table row's first cell comes right after ``\\``, which would read it as its
    optional argument ("[W8] ..." stopped pdflatex)."""
    out = "".join(_TEX.get(ch, ch) for ch in str(s))
    return "{}" + out if out.startswith("[") else out


def notes_latex(notes: list[str], suite: str, label: str) -> str:
    """The report's notes as a LaTeX section for the proof document (``tables.pdf``), not for a
    paper: on a page of its own after the tables, one item per note, `code` in typewriter."""
    items = "".join(
        "\\item " + "".join(rf"\texttt{{{tex(part)}}}" if i % 2 else tex(part)
                             for i, part in enumerate(n.split("`"))) + "\n"
        for n in notes)
    return f"\\clearpage\n\\section*{{Notes on {tex(suite)} [{tex(label)}]}}\n\\begin{{itemize}}\n{items}\\end{{itemize}}\n"


FLOATS = ("table", "table*")
"""The float a ``.tex`` table is put in: ``table*`` spans both columns of a two-column paper."""


def tex_label(key: str, table: str) -> str:
    """A table's ``\\label``: ``tab:KEY-TABLE``, KEY the suite's name unless ``--tex-key`` gives another."""
    return f"tab:{key}-{table}"


def fit_tabular(tabular: list[str]) -> list[str]:
    """``tabular`` (its lines) typeset at its natural size, or scaled down to the line width
    where it is wider (a narrow column of a two-column paper); needs graphicx."""
    return [r"\ifdefined\mgrqbox\else\newsavebox{\mgrqbox}\fi",
            r"\sbox{\mgrqbox}{%", *tabular[:-1], tabular[-1] + "}%",
            r"\ifdim\wd\mgrqbox>\linewidth\resizebox{\linewidth}{!}{\usebox{\mgrqbox}}\else\usebox{\mgrqbox}\fi"]


def wa(bits: str) -> str:
    """``W4A4`` -> ``4/4``; ``FP`` -> ``32/32``."""
    if bits == "FP":
        return "32/32"
    w, a = bits.upper().lstrip("W").split("A")
    return f"{w}/{a}"


@dataclass
class Value:
    mean: float = math.nan
    std: float = math.nan
    n: int = 0
    failed: int = 0
    missing: int = 0  # seeds of the grid without a record (not run, running, interrupted)
    bold: bool = False
    text: str | None = None  # shown as is (cost and paired cells), instead of the formatted mean
    italic: bool = False

    def latex(self) -> str:
        if self.text is not None:
            t = tex(self.text)
            return rf"\textbf{{\boldmath {t}}}" if self.bold else rf"\textit{{{t}}}" if self.italic else t
        if self.n == 0:
            return "fail" if self.failed else "--"
        s = f"{self.mean:.2f}"
        s = rf"\textbf{{{s}}}" if self.bold else s
        if self.n > 1 and not math.isnan(self.std):
            s += rf"{{\scriptsize$\pm${self.std:.2f}}}"
        return s + (r"$^\ast$" if self.failed or self.missing else "")

    def markdown(self) -> str:
        if self.text is not None:
            return f"**{self.text}**" if self.bold else f"*{self.text}*" if self.italic else self.text
        if self.n == 0:
            return "fail" if self.failed else "–"
        s = f"{self.mean:.2f}"
        s = f"**{s}**" if self.bold else s
        if self.n > 1 and not math.isnan(self.std):
            s += f" ± {self.std:.2f}"
        return s + ("\\*" if self.failed or self.missing else "")


@dataclass
class Row:
    name: str  # display name
    bits: str  # "FP" or "W4A4"
    values: dict[str, Value]
    published: bool = False
    citation: str | None = None


@dataclass
class Table:
    title: str
    caption: str
    label: str
    models: list[str]
    groups: list[tuple[str, list[Row]]]  # (bits or "FP", rows)
    show_wa: bool = True
    avg: bool = False  # an "Avg." column (ablation)
    notes: list[str] = field(default_factory=list)
    float_env: str = "table"  # or "table*" (FLOATS)

    def _avgs(self, rows: list[Row]) -> list[Value]:
        """The "Avg." of each row of a block, the best in bold (as each model column's)."""
        avgs = [_avg(r, self.models) for r in rows]
        got = [(round(v.mean, 2), v) for v, r in zip(avgs, rows, strict=True) if v.n and not r.published]
        if len(got) > 1:
            best = max(m for m, _ in got)
            for m, v in got:
                v.bold = m == best
        return avgs

    # ---- LaTeX ------------------------------------------------------------------------------
    def latex(self) -> str:
        cols = [model_name(m) for m in self.models] + (["Avg."] if self.avg else [])
        spec = "l" + ("c" if self.show_wa else "") + "c" * len(cols)
        head = ["Method"] + (["W/A"] if self.show_wa else []) + cols
        lines = [
            f"% {self.title}. Generated by `mgrq report`; needs \\usepackage{{booktabs,graphicx}}.",
            rf"\begin{{{self.float_env}}}[t]", r"\centering",
            rf"\caption{{{tex(self.caption)}}}", rf"\label{{{self.label}}}",
        ]
        tab = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(tex(h) for h in head) + r" \\"]
        for _, rows in self.groups:
            tab.append(r"\midrule")
            avgs = self._avgs(rows) if self.avg else [None] * len(rows)
            for r, av in zip(rows, avgs, strict=True):
                name = tex(r.name) + (r"$^\dagger$" if r.published else "")
                cells = [r.values.get(m, Value()).latex() for m in self.models] + ([av.latex()] if av else [])
                lead = [name] + ([wa(r.bits)] if self.show_wa else [])
                tab.append(" & ".join(lead + cells) + r" \\")
        lines += fit_tabular([*tab, r"\bottomrule", r"\end{tabular}"])
        if self.notes:
            lines.append(r"\par\smallskip{\footnotesize " + r" \\ ".join(self.notes_tex()) + "}")
        lines.append(rf"\end{{{self.float_env}}}")
        return "\n".join(lines) + "\n"

    def notes_tex(self) -> list[str]:
        out = []
        for n in self.notes:
            lead = {"†": r"$^\dagger$", "*": r"$^\ast$"}.get(n[:1])
            out.append(lead + tex(n[1:]) if lead else tex(n))
        return out

    # ---- Markdown ---------------------------------------------------------------------------
    def markdown(self) -> str:
        cols = [model_name(m) for m in self.models] + (["Avg."] if self.avg else [])
        head = ["Method"] + (["W/A"] if self.show_wa else []) + cols
        lines = [f"**{self.caption}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join([":--"] + [":-:"] * (len(head) - 1)) + "|"]
        for _, rows in self.groups:
            avgs = self._avgs(rows) if self.avg else [None] * len(rows)
            for r, av in zip(rows, avgs, strict=True):
                name = r.name + (" †" if r.published else "")
                cells = [r.values.get(m, Value()).markdown() for m in self.models] + ([av.markdown()] if av else [])
                lead = [name] + ([wa(r.bits)] if self.show_wa else [])
                lines.append("| " + " | ".join(lead + cells) + " |")
        if self.notes:
            lines += [""] + [("\\" + n if n.startswith("*") else n) + "  " for n in self.notes]  # a mark, not a bullet
        return "\n".join(lines) + "\n"


def _avg(r: Row, models: list[str]) -> Value:
    vals = [r.values.get(m, Value()) for m in models]
    if not vals or any(v.n == 0 for v in vals):
        return Value()
    return Value(mean=sum(v.mean for v in vals) / len(vals), n=1)


def _bits_order(bits: list[str], preferred: list[str] | None = None) -> list[str]:
    """The bit-widths present in ``bits``: in ``preferred`` order (the suite's), then the rest
    from low to high."""
    def key(b: str) -> tuple[int, int]:
        w, a = b.upper().lstrip("W").split("A")
        return int(w), int(a)

    found = set(bits)
    first = [b for b in (preferred or []) if b in found]
    return first + sorted(found - set(first), key=key)


def _values(agg: pd.DataFrame, name: str, bits: str, models: list[str]) -> dict[str, Value]:
    out = {}
    sub = agg[(agg["name"] == name) & (agg["bits"] == bits)]
    for m in models:
        r = sub[sub["model"] == m]
        if r.empty:
            continue
        r0 = r.iloc[0]
        out[m] = Value(mean=float(r0["mean"]) if r0["n"] else math.nan,
                       std=float(r0["std"]) if r0["n"] > 1 else math.nan,
                       n=int(r0["n"]), failed=int(r0["failed"]), missing=int(r0.get("missing", 0) or 0))
    return out


PARTIAL_NOTE = "* some seeds failed or have no result yet; mean over the seeds that finished."


def _partial(runs: pd.DataFrame) -> bool:
    """Some cell shows a mean over fewer seeds than the grid has (failed or without a record)."""
    short = runs["failed"] + runs.get("missing", 0)
    return bool(((short > 0) & (runs["n"] > 0)).any())


def _bold_best(rows: list[Row], models: list[str]) -> None:
    for m in models:
        vals = [r.values[m] for r in rows if not r.published and m in r.values and r.values[m].n]
        if len(vals) < 2:
            continue
        best = max(round(v.mean, 2) for v in vals)
        for v in vals:
            v.bold = round(v.mean, 2) == best


def _fp_row(agg: pd.DataFrame, models: list[str]) -> Row:
    vals = {}
    for m in models:
        fp = agg[(agg["model"] == m) & (agg["source"] == "run") & agg["n"].gt(0)]["fp"].dropna()
        if len(fp):
            vals[m] = Value(mean=float(fp.mean()), n=1)
    return Row(method_name("fp"), "FP", vals)


def _seed_note(agg: pd.DataFrame) -> str | None:
    runs = agg[(agg["source"] == "run") & agg["n"].gt(0)]  # a cell that only failed shows "fail"
    if runs.empty:
        return None
    n, low = int(runs["n"].max()), int(runs["n"].min())
    if low != n:  # a partial run: do not claim every cell has n seeds
        return f"Mean ± std over the seeds that finished: {low} to {n} per cell (sample std, n−1)."
    return f"Mean ± std over {n} seeds (sample std, n−1)." if n > 1 else "One seed per cell."


def main_table(agg: pd.DataFrame, models: list[str], names: list[str], suite: str, label: str,
               published: pd.DataFrame | None = None, caption: str | None = None,
               n_eval: float | tuple[float, float] | None = None, bits_pref: list[str] | None = None, tune: bool = False,
               calib: dict[str, str] | None = None) -> Table:
    """Models as columns, methods (``names``, in order) as rows grouped by bit-width, FP first.
    ``calib``: each row's calibration images; where rows differ, the caption says which has how
    many (a method that sees more images is compared with one that sees fewer).
    ``tune``: the cells ran on the tune split, which the caption says (the build leaves out the
    published rows then: they are on the held-out images)."""
    runs = agg[agg["source"] == "run"]
    groups: list[tuple[str, list[Row]]] = [("FP", [_fp_row(runs, models)])]
    notes = []
    pub = published if published is not None and not published.empty else None
    if pub is not None:
        pub = pub[pub["model"].isin(models)]
        if pub.empty:
            pub = None
    if pub is not None and "FP" in set(pub["bits"]):
        fp_vals = {r.model: Value(mean=r.top1, n=1) for r in pub[pub["bits"] == "FP"].itertuples()}
        groups[0][1].append(Row(method_name("fp"), "FP", fp_vals, published=True))
    for bits in _bits_order(list(runs["bits"]), bits_pref):
        rows = [Row(method_name(n), bits, _values(runs, n, bits, models)) for n in names
                if not runs[(runs["name"] == n) & (runs["bits"] == bits)].empty]
        _bold_best(rows, models)
        if pub is not None:
            pb = pub[pub["bits"] == bits]
            for meth in dict.fromkeys(pb["method"]):
                vals = {r.model: Value(mean=r.top1, n=1) for r in pb[pb["method"] == meth].itertuples()}
                rows.append(Row(METHOD_NAMES.get(meth, meth), bits, vals, published=True))  # the paper's name, not report.names
        groups.append((bits, rows))
    if pub is not None:
        cites = sorted(set(pub["citation"]))
        notes.append("† published numbers (not run here): " + "; ".join(cites) + ".")
    if _partial(runs):
        notes.append(PARTIAL_NOTE)
    seeds = _seed_note(runs)
    lead = caption.strip().rstrip(".") if caption else f"Top-1 accuracy (%) of quantized ViTs{_run_of(suite, label)}"
    cap = lead + _evaluated(n_eval) + ". Best per column and bit-width in bold." + (f" {seeds}" if seeds else "")
    if calib and len(set(calib.values())) > 1:
        by_n: dict[str, list[str]] = {}
        for n in names:
            if n in calib:
                by_n.setdefault(calib[n], []).append(method_name(n))
        cap += " Calibration images: " + "; ".join(f"{k} ({', '.join(v)})" for k, v in by_n.items()) + "."
    return Table("Main table", cap + _tune_note(tune), tex_label(suite, "main"), models, groups, notes=notes)


def _tune_note(tune: bool) -> str:
    """The caption's sentence for cells on the tune split (also under a suite's own caption, and
    in every table of accuracies: each may be input into a paper on its own)."""
    return (" Evaluated on the tune split, carved from the training images (which the model was trained on), "
            "for choosing settings; not comparable with held-out or published numbers.") if tune else ""


def _evaluated(n_eval: float | tuple[float, float] | None) -> str:
    """The caption's ", evaluated on N images" (``(low, high)``: the cells differ, e.g. a rerun
    with ``--eval-limit``; the notes say which), or nothing."""
    if isinstance(n_eval, tuple):
        return f", evaluated on {int(n_eval[0])} to {int(n_eval[1])} images per cell (see the notes)"
    return f", evaluated on {int(n_eval)} images" if n_eval else ""


def ablation_table(agg: pd.DataFrame, models: list[str], rows_in: list[str], suite: str,
                   label: str, bits_pref: list[str] | None = None, n_eval: float | tuple[float, float] | None = None,
                   tune: bool = False) -> Table:
    """Variants (``rows_in``, in order) x models, one block per bit-width, with the average."""
    runs = agg[agg["source"] == "run"]
    groups = []
    for bits in _bits_order(list(runs[runs["name"].isin(rows_in)]["bits"]), bits_pref):
        rows = [Row(method_name(n), bits, _values(runs, n, bits, models)) for n in rows_in]
        _bold_best(rows, models)
        groups.append((bits, rows))
    seeds = _seed_note(runs)
    cap = (f"Ablation: top-1 accuracy (%) per variant{_run_of(suite, label)}{_evaluated(n_eval)}. "
           "Avg.: the mean over the models. Best per column and bit-width in bold." + (f" {seeds}" if seeds else "")
           + _tune_note(tune))
    partial = _partial(runs[runs["name"].isin(rows_in)])
    return Table("Ablation table", cap, tex_label(suite, "ablation"), models, groups, avg=True,
                 notes=[PARTIAL_NOTE] if partial else [])


def cost_table(agg: pd.DataFrame, models: list[str], names: list[str], suite: str, label: str,
               bits_pref: list[str] | None = None) -> Table:
    """Cost beside accuracy: mean quantization wall time and peak memory per method x model,
    one block per bit-width (every row of the label, also those ``report.main`` leaves out of the
    main table)."""
    runs = agg[(agg["source"] == "run") & agg["n"].gt(0)]
    devices = {str(d) for d in runs.get("device", pd.Series(dtype=object)).dropna()}
    # cells (or the seeds of one: "cpu+cuda") ran on different devices: say where, times are not comparable
    mixed = len(devices) > 1 or any("+" in d for d in devices)
    groups = []
    for bits in _bits_order(list(runs["bits"]), bits_pref):
        rows = []
        for n in names:
            sub = runs[(runs["name"] == n) & (runs["bits"] == bits)]
            if sub.empty:
                continue
            vals = {}
            for r in sub.itertuples():
                mem = "" if pd.isna(r.peak_mem_mb) else f", {r.peak_mem_mb:.0f} MiB"
                dev = f" ({device_name(r.device)})" if mixed and isinstance(r.device, str) else ""
                vals[r.model] = Value(n=1, text=f"{r.quantize_s:.1f} s{mem}{dev}")
            rows.append(Row(method_name(n), bits, vals))
        groups.append((bits, rows))
    peak = {"CPU": "resident set size of the whole process (Python and torch included)",
            "GPU": "CUDA memory allocated"}
    if mixed or not devices:
        where = ("Peak memory: CUDA allocated on GPU, resident set size of the whole process (Python and torch "
                 "included) on CPU.")
    else:  # one device: say which, and only its kind of peak memory
        d = device_name(next(iter(devices)))
        where = f"Every cell ran on {d}; peak memory: {peak.get(d, 'as the device reports it')}."
    cap = (f"Cost: quantization wall time and peak memory (mean over seeds){_run_of(suite, label)}. {where}"
           + (" Cells ran on different devices (marked); compare times only on one device." if mixed else ""))
    return Table("Cost table", cap, tex_label(suite, "cost"), models, groups)


SETUP_CAPTION = ("Setup per row{run}: calibration images, and the settings in which the "
                 "method differs from its defaults; a/b: the row's cells differ.")


def setup_latex(setups: list[tuple[str, str, str, list[str]]], suite: str, label: str,
                float_env: str = "table", key: str | None = None) -> str:
    """The rows' setup (:func:`reports.frame.row_setups`) as a LaTeX table: method, registered
    method, calibration images, non-default settings (a wrapping column, in typewriter)."""
    lines = [
        "% Setup table. Generated by `mgrq report`; needs \\usepackage{booktabs,graphicx}.",
        rf"\begin{{{float_env}}}[t]", r"\centering", r"\small",
        rf"\caption{{{tex(SETUP_CAPTION.format(run=_run_of(suite, label)))}}}", rf"\label{{{tex_label(key or suite, 'setup')}}}",
    ]
    tab = [r"\begin{tabular}{@{}llrl@{}}", r"\toprule",
           r"Method & Runs as & Calib. & Settings \\", r"\midrule"]
    for name, method, calib, shown in setups:
        sets = r", \allowbreak ".join(rf"\texttt{{{tex(s)}}}" for s in shown) or "--"
        sets = rf"\parbox[t]{{0.45\linewidth}}{{\raggedright {sets}}}"
        tab.append(rf"{tex(method_name(name))} & \texttt{{{tex(method)}}} & {tex(calib)} & {sets} \\")
    lines += [*fit_tabular([*tab, r"\bottomrule", r"\end{tabular}"]), rf"\end{{{float_env}}}"]
    return "\n".join(lines) + "\n"


def setup_markdown(setups: list[tuple[str, str, str, list[str]]], suite: str, label: str) -> str:
    """:func:`setup_latex` as a Markdown table."""
    lines = [f"**{SETUP_CAPTION.format(run=_run_of(suite, label))}**", "",
             "| Method | Runs as | Calib. | Settings |", "|:--|:--|--:|:--|"]
    for name, method, calib, shown in setups:
        sets = ", ".join(f"`{s}`" for s in shown) or "–"
        lines.append(f"| {method_name(name)} | `{method}` | {calib} | {sets.replace('|', chr(92) + '|')} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Paired by seed: one method against each of the others
# --------------------------------------------------------------------------------------------


def paired_frame(df: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per (model, bits, name) other than ``reference``: the top-1 differences
    ``reference - name`` over the seeds where both cells finished (same model, bits and seed: the
    same random draw of calibration images, of which a method with fewer images takes a prefix),
    with their mean, standard deviation, the half-width of the two-sided 95% Student-t interval
    of the mean (NaN below 2 seeds), the number of seeds where ``reference`` is at least level,
    and a verdict: ``ahead`` (interval above 0), ``behind`` (below 0), ``tie`` (contains 0) or
    ``n<2``."""
    from scipy.stats import t as student_t

    cols = ["model", "bits", "name", "n", "diff", "sd", "half", "level", "verdict"]
    done = df[(df["status"] == "done") & df["top1"].notna()]
    if "source" in done:
        done = done[done["source"] == "run"]
    key = ["model", "bits", "seed"]
    ref = done[done["name"] == reference][[*key, "top1"]]
    rows = []
    for (model, bits, name), g in done[done["name"] != reference].groupby(["model", "bits", "name"]):
        m = g[[*key, "top1"]].merge(ref, on=key, suffixes=("", "_ref"))
        d = (m["top1_ref"] - m["top1"]).to_numpy(dtype=float).round(9)  # 97.3 - 97.3 is exactly 0
        n = len(d)
        if n == 0:
            continue
        mean = round(float(d.mean()), 9) + 0.0  # no -0.0
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        half = float(student_t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
        if n < 2:
            verdict = "n<2"
        else:
            verdict = "ahead" if mean - half > 0 else "behind" if mean + half < 0 else "tie"
        rows.append([model, bits, name, n, mean, sd, half, int((d >= 0).sum()), verdict])
    return pd.DataFrame(rows, columns=cols)


def _paired_text(diff: float, half: float, verdict: str) -> str:
    """``+0.22 ± 0.18``: two decimals, or as many more (at most 4) as it takes for the printed
    interval to say what the verdict says. An interval above 0 by less than the rounding
    (0.2233 ± 0.218) would otherwise print as touching it (+0.22 ± 0.22) beside a bold verdict."""
    if math.isnan(half):
        return f"{round(diff, 2) + 0.0:+.2f}"  # -0.003 shows as +0.00, not -0.00
    for d in (2, 3, 4):
        m, h = round(diff, d) + 0.0, round(half, d)
        lo, hi = round(m - h, d), round(m + h, d)
        if {"ahead": lo > 0, "behind": hi < 0}.get(verdict, lo <= 0 <= hi):
            break
    return f"{m:+.{d}f} ± {h:.{d}f}"


def paired_table(df: pd.DataFrame, reference: str, models: list[str], names: list[str], suite: str,
                 label: str, bits_pref: list[str] | None = None, n_eval: float | tuple[float, float] | None = None,
                 tune: bool = False) -> Table:
    """The paired differences of :func:`paired_frame` as a table: the other methods (``names``
    order) as rows, models as columns, one block per bit-width."""
    pf = paired_frame(df, reference)
    groups = []
    for bits in _bits_order(list(pf["bits"]), bits_pref):
        rows = []
        for n in names:
            sub = pf[(pf["name"] == n) & (pf["bits"] == bits)]
            if n == reference or sub.empty:
                continue
            vals = {}
            for r in sub.itertuples():
                text = _paired_text(r.diff, r.half, r.verdict)
                vals[r.model] = Value(n=int(r.n), text=f"{text} ({r.level}/{r.n})".replace("-", "−"),
                                      bold=r.verdict == "ahead", italic=r.verdict == "behind")
            rows.append(Row(method_name(n), bits, vals))
        if rows:
            groups.append((bits, rows))
    ref = method_name(reference)
    cap = (f"Paired by seed{_run_of(suite, label)}{_evaluated(n_eval)}: top-1 of {ref} minus each method "
           f"(points), mean over the seeds where both finished ± half-width of the 95% Student-t interval; (k/n): seeds "
           f"where {ref} is at least level. Bold: interval above 0 ({ref} ahead); italic: below 0 "
           f"({ref} behind); plain: the interval contains 0 (within seed noise). "
           "No correction for multiple comparisons."
           + (" An entry over one seed has no interval." if (pf["n"] < 2).any() else "") + _tune_note(tune))
    return Table("Paired table", cap, tex_label(suite, "paired"), models, groups)


# --------------------------------------------------------------------------------------------
# Comparing two labels (nightly runs)
# --------------------------------------------------------------------------------------------


ALERT_FLAGS = ("moved", "newly failed", "new warning", "new, failed", "missing", "interrupted")  # the last two: B lost a cell A had
"""The flags that make ``mgrq report --compare ... --strict`` exit 1."""
ROUND_DELTA = 6  # decimals: 0.5 from image counts (250 of 50,000) may come out 0.5000000000000071


def compare_frame(a: pd.DataFrame, b: pd.DataFrame, threshold: float, models: list[str] | None = None,
                  names: list[str] | None = None, bits: list[str] | None = None,
                  interrupted_b: set[tuple[Any, ...]] | frozenset[tuple[Any, ...]] = frozenset()) -> pd.DataFrame:
    """One row per cell (model, name, bits, seed) of either label: top-1 in A and B, the delta
    (rounded to ``ROUND_DELTA`` decimals, so a move of exactly the threshold is never flagged by a
    float's last bit) and a flag: ``moved`` (|delta| > threshold), ``newly failed`` (done in A,
    failed in B), ``new warning`` (done in both, not moved, but B's record holds more warnings than
    A's: a reconstruction unit whose output error rose, which top-1 alone may not show),
    ``still failing``, ``fixed``, ``new`` (only in B, done), ``new, failed`` (only in
    B, failed), ``interrupted`` (only in A: B's record of it says stopped; its ``(model, name,
    bits, seed)`` in ``interrupted_b``), ``missing`` (only in A: no result in B, no record or one still running) or
    empty. Sorted by flag, then in the order of ``models``, ``names`` and ``bits`` (the suite's;
    others after them, as :func:`_bits_order` puts them), and seed."""
    key = ["model", "name", "bits", "seed"]
    cols = [*key, "status", "top1"] + [c for c in ("warnings", "git_sha") if c in a and c in b]
    m = a[cols].merge(b[cols], on=key, how="outer", suffixes=("_a", "_b"))
    m["delta"] = (m["top1_b"] - m["top1_a"]).round(ROUND_DELTA)

    def flag(r: pd.Series) -> str:
        sa, sb = r["status_a"], r["status_b"]
        if pd.isna(sa):
            return "new" if sb == "done" else "new, failed"
        if pd.isna(sb):
            return "interrupted" if (r["model"], r["name"], r["bits"], int(r["seed"])) in interrupted_b else "missing"
        if sa == "done" and sb == "failed":
            return "newly failed"
        if sa == "failed" and sb == "done":
            return "fixed"
        if sa == "failed" and sb == "failed":
            return "still failing"
        if abs(r["delta"]) > threshold:
            return "moved"
        w = [r.get(f"warnings_{s}") for s in "ab"]  # unknown on either side (an older CSV): no verdict
        if sa == "done" and sb == "done" and not any(pd.isna(x) for x in w) and w[1] > w[0]:
            return "new warning"
        return ""

    m["flag"] = m.apply(flag, axis=1) if len(m) else pd.Series(dtype=str)
    order = {"newly failed": 0, "moved": 1, "new warning": 1, "still failing": 2, "missing": 3, "interrupted": 3,
             "new, failed": 4, "fixed": 5, "new": 6, "": 7}
    m["_o"] = m["flag"].map(order)
    bits_all = _bits_order(list(m["bits"]), bits) if len(m) else []
    for col, first in (("model", models or []), ("name", names or []), ("bits", bits_all)):
        m[f"_{col}"] = [(first.index(v), "") if v in first else (len(first), str(v)) for v in m[col]]
    keys = ["_o", "_model", "_name", "_bits", "seed"]
    return m.sort_values(keys).drop(columns=["_o", "_model", "_name", "_bits"]).reset_index(drop=True)


def _commits_note(cmp: pd.DataFrame) -> str:
    """The sentence naming the source tree(s) each side ran from (the cells' ``git_sha``), so a
    delta can be traced to the commits between them; empty without that column."""
    parts = []
    if not any(c in cmp and cmp[c].notna().any() for c in ("git_sha_a", "git_sha_b")):
        return ""  # records from before git_sha: nothing to say
    for side in ("a", "b"):
        col = f"git_sha_{side}"
        has = cmp[f"status_{side}"].notna() if f"status_{side}" in cmp else pd.Series(False, index=cmp.index)
        shas = (cmp.loc[has, col].map(lambda v: short_sha(None if pd.isna(v) else v)).value_counts()
                if col in cmp else pd.Series(dtype=int))  # a cell without a recorded sha: "unknown"
        if len(shas) == 1:
            parts.append(f"{side.upper()} ran at {shas.index[0]}")
        elif len(shas) > 1:
            parts.append(f"{side.upper()} at " + ", ".join(f"{k} ({n} cell{'s' * (n != 1)})" for k, n in shas.items()))
    return ("; ".join(parts) + ".") if parts else ""


def _changes_note(changes: list[str], label_a: str, label_b: str) -> str:
    """The sentence under a comparison naming the settings that differ between its labels."""
    if not changes:
        return ""
    return (f"Settings that differ from {label_a} to {label_b} (their effect is in the deltas): "
            + "; ".join(changes) + ".")


def compare_markdown(cmp: pd.DataFrame, label_a: str, label_b: str, threshold: float,
                     changes: list[str] | None = None) -> str:
    flagged = int((cmp["flag"].isin(ALERT_FLAGS)).sum())
    lines = [f"**Top-1 change from {label_a} (A) to {label_b} (B); flagged: |Δ| > {threshold:g} "
             f"points, a new failure, a new warning or a cell without a result in B ({flagged} cell(s))**", "",
             "| Model | Method | W/A | Seed | A | B | Δ | Flag |", "|:--|:--|:-:|:-:|--:|--:|--:|:--|"]
    for r in cmp.itertuples():
        a = "fail" if r.status_a == "failed" else ("–" if pd.isna(r.top1_a) else f"{r.top1_a:.2f}")
        b = "fail" if r.status_b == "failed" else ("–" if pd.isna(r.top1_b) else f"{r.top1_b:.2f}")
        fl = f"**{_flag_text(r)}**" if r.flag in ALERT_FLAGS else r.flag
        lines.append(f"| {model_name(r.model)} | {method_name(r.name)} | {wa(r.bits)} | {r.seed} "
                     f"| {a} | {b} | {_delta(r.delta)} | {fl} |")
    for note in (_commits_note(cmp), _changes_note(changes or [], label_a, label_b)):
        if note:
            lines += ["", note]
    return "\n".join(lines) + "\n"


def _flag_text(r: Any) -> str:
    """A comparison row's flag as printed: ``new warning`` with its counts (``A → B``), which the
    flag alone does not tell (how many units' output error rose)."""
    if r.flag == "new warning":
        return f"new warning ({int(r.warnings_a)} → {int(r.warnings_b)})"
    return str(r.flag)


def _delta(d: float) -> str:
    """A comparison's delta with a typographic minus (as the paired table's), ``–`` for none."""
    return "–" if pd.isna(d) else f"{d:+.2f}".replace("-", "−")


def compare_latex(cmp: pd.DataFrame, suite: str, label_a: str, label_b: str, threshold: float,
                  changes: list[str] | None = None, float_env: str = "table", key: str | None = None) -> str:
    note = " ".join(n for n in (_commits_note(cmp), _changes_note(changes or [], label_a, label_b)) if n)
    lines = ["% Comparison table. Generated by `mgrq report --compare`; needs \\usepackage{booktabs,graphicx}.",
             rf"\begin{{{float_env}}}[t]", r"\centering",
             rf"\caption{{Top-1 change, suite {tex(suite)}: {tex(label_a)} (A) to {tex(label_b)} (B); "
             rf"flagged when $|\Delta| > {threshold:g}$, a new failure, a new warning or a cell without a result in B."
             + (f" {tex(note)}" if note else "") + "}",
             rf"\label{{{tex_label(key or suite, 'compare')}}}"]
    tab = [r"\begin{tabular}{lllcrrrl}", r"\toprule",
           r"Model & Method & W/A & Seed & A & B & $\Delta$ & Flag \\", r"\midrule"]
    for r in cmp.itertuples():
        a = "fail" if r.status_a == "failed" else ("--" if pd.isna(r.top1_a) else f"{r.top1_a:.2f}")
        b = "fail" if r.status_b == "failed" else ("--" if pd.isna(r.top1_b) else f"{r.top1_b:.2f}")
        fl = rf"\textbf{{{tex(_flag_text(r))}}}" if r.flag in ALERT_FLAGS else tex(r.flag)
        tab.append(f"{tex(model_name(r.model))} & {tex(method_name(r.name))} & {wa(r.bits)} & "
                   f"{r.seed} & {a} & {b} & {tex(_delta(r.delta)).replace('–', '--')} & {fl} \\\\")
    lines += [*fit_tabular([*tab, r"\bottomrule", r"\end{tabular}"]), rf"\end{{{float_env}}}"]
    return "\n".join(lines) + "\n"
