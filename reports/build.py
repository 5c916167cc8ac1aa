"""The report generator: run records (or MLflow) -> DataFrame -> LaTeX and Markdown tables,
figures, and a compiled PDF of the tables when ``pdflatex`` is installed.

    mgrq report demo                          # newest label of the demo suite, from the records
    mgrq report imagenet-w4a4 --from mlflow   # the same from the MLflow store
    mgrq report imagenet-w4a4 --compare previous latest --threshold 0.5
    mgrq report ablation-mgrq --paired mgrq   # + MGRQ minus each method, paired by seed

Output (default ``<out>/<suite>/<label>/report/``): ``main.tex``, ``main.md``, ``ablation.tex``,
``ablation.md`` (suites with an ablation), ``paired.tex``, ``paired.md`` (with a reference
method: ``--paired METHOD`` or the suite's ``report.paired``), ``cost.tex``, ``cost.md``
(quantization time and peak memory), ``setup.tex``, ``setup.md`` (each row's calibration size and
the settings in which it differs from its method's defaults), ``tables.tex`` + ``tables.pdf``, ``results.csv``,
``acc_vs_bits.{pdf,png}``, ``ablation.{pdf,png}``, ``acc_vs_time.{pdf,png}``, ``notes.md`` +
``notes.tex`` (when there is something to note; the last page of ``tables.pdf``); for a comparison,
``compare-<A>-vs-<B>.{md,tex,csv}``. A cell recorded twice in one label (rerun under another
hash) counts once, its newest record; the report's notes name the others.
"""

from __future__ import annotations

import functools
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd

from mgrq import records
from mgrq.errors import ConfigError, MGRQError, UnknownNameError, close_names, first_line
from mgrq.runner.layout import out_flag
from mgrq.spec import SPLIT_NAMES
from reports import frame as F
from reports import tables as T


class ReportError(MGRQError):
    """A report could not be built (no records, LaTeX failed to compile, ...)."""


@dataclass
class Report:
    dest: Path
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    pdf: Path | None = None
    pdf_note: str | None = None
    notes: list[str] = field(default_factory=list)  # what was left out, and why
    main_markdown: str = ""
    paired_markdown: str = ""
    frame: pd.DataFrame | None = None


REPORT_KEYS = ("ablation", "caption", "paired", "names", "main")  # a suite file's report block: presentation only


def suite_info(out: Path, suite: str, label: str | None, suite_file: str | Path | None = None) -> dict[str, Any]:
    """Model/method order and report settings: from the label's ``suite.json``, else the suite
    file (names not checked), else empty. A label run before ``report.paired`` existed takes
    that setting from the suite file. A ``suite_file`` given (``mgrq report FILE.yaml``) gives the
    report block (:data:`REPORT_KEYS`), so an edited block is used without running the suite again;
    ``info["from_file"]`` then names the settings that differ from the label's."""
    meta = records.read_record(Path(out).resolve() / suite / label / "suite.json") if label else None
    if meta:
        # a label run before a setting existed: the suite file's; report.names (presentation only)
        # also when the label recorded none, so names can be set after the runs
        missing = [k for k in ("paired", "names", "main") if k not in meta or (k == "names" and not meta[k])]
        if missing:
            from_file = _suite_file_info(meta.get("file") or suite)
            for key in missing:
                meta[key] = from_file.get(key)
    info = meta or _suite_file_info(suite)
    mine = _suite_file_info(suite_file) if suite_file is not None else {}
    if mine:  # (unreadable: _suite_name() read it a moment ago; keep the label's)
        changed = [k for k in REPORT_KEYS if (mine.get(k) or None) != (info.get(k) or None)]
        info.update({k: mine.get(k) for k in REPORT_KEYS})
        info["from_file"] = changed if meta else []
    return info


def _from_file_note(keys: list[str], suite_file: str | Path | None, suite: str, label: str, out: Path) -> str:
    return (f"report.{', report.'.join(keys)} from {suite_file}, not as label {label} ran with it "
            f"(its suite.json); `mgrq report {suite}{out_flag(out)} --label {label}` reports with the label's")


def _suite_file_info(suite: str | Path) -> dict[str, Any]:
    """Report settings from a suite file (a name or the path a label recorded); empty when it
    cannot be read: the records alone still make a report."""
    try:
        from mgrq.runner.suite import load_suite

        s = load_suite(suite, check_names=False)
        return {"models": list(s.models), "methods": [m.name for m in s.methods],
                "bits": [f"W{w}A{a}" for w, a in s.bits],
                "ablation": list(s.ablation), "caption": s.caption, "paired": s.paired,
                "names": dict(s.row_names), "main": list(s.main)}
    except Exception:  # a missing, renamed or broken file: no settings, not a failed report
        return {}


def load_frame(out: Path, suite: str, labels: list[str], source: str = "records",
               uri: str | None = None) -> pd.DataFrame:
    if source == "records":
        return F.records_frame(out, suite, labels)
    if source == "mlflow":
        from mgrq.tracking import default_uri

        return F.mlflow_frame(uri or default_uri(out), suite, labels, F.label_grids(out, suite, labels))
    raise ConfigError(f"--from {source!r}: expected 'records' or 'mlflow'")


def _label(out: Path, suite: str, label: str | None, source: str, uri: str | None) -> str:
    """A label, with ``latest``/``previous`` resolved in the source the report reads."""
    from mgrq.runner.layout import resolve_label

    if source == "mlflow":
        from mgrq.tracking import default_uri, labels

        u = uri or default_uri(out)
        try:
            known = labels(u, suite)
            if label in (None, "latest", "previous"):
                _check_mlflow_has_newest(out, suite, known, u, uri)
            if label == "previous" and len(known) > 2:  # as from the run folders: skip a night with no result
                return _previous_with_results(known, lambda lab: len(F.mlflow_frame(u, suite, [lab], F.label_grids(out, suite, [lab]))) > 0)
            return resolve_label(out, suite, label, known=known, where=f"MLflow {u}")
        except UnknownNameError as e:
            if label is None or not (out.resolve() / suite / label).is_dir():
                raise
            cmd = shlex.join(["mgrq", "mirror", "--out", str(out), "--suite", suite, "--label", label]
                             + (["--tracking-uri", u] if uri else []))
            raise UnknownNameError(f"{e} (its run folder {out.resolve() / suite / label} exists: `{cmd}` puts it "
                                   "there)") from None
    if label != "previous":
        return resolve_label(out, suite, label)
    from mgrq.runner.layout import labels as run_labels

    # `latest` stays the newest label, records or not (a night that ran nothing is an error for
    # --compare, so --strict alerts on it); `previous` is the newest older label where a cell
    # finished or failed, so one aborted or cancelled night does not block the next night's comparison
    every = run_labels(out, suite)
    if len(every) < 2:
        return resolve_label(out, suite, "previous")  # its error: fewer than two runs
    return _previous_with_results(every, lambda lab: len(F.records_frame(out, suite, [lab])) > 0)


def _previous_with_results(every: list[str], has_results: Callable[[str], bool]) -> str:
    """``previous`` among ``every`` (oldest first, two or more): the newest label before the last
    where a cell finished or failed (a result, as the tables count one), with a note naming the
    labels skipped; the one before the last when none has."""
    latest = every[-1]
    previous = next((lab for lab in reversed(every[:-1]) if has_results(lab)), every[-2])
    skipped = every[every.index(previous) + 1:-1]
    if skipped:
        print(f"note: previous = {previous}: label(s) {', '.join(skipped)} between it and {latest} hold no "
              "finished cell (none, or only running or interrupted ones) and are skipped", file=sys.stderr)
    return previous


def _check_mlflow_has_newest(out: Path, suite: str, known: list[str], u: str, uri: str | None) -> None:
    """``latest``/``previous`` from MLflow: the suite's newest label under ``out`` (when this
    machine has its run folders) must be in MLflow too, else MLflow's newest is an older night,
    compared in silence. :class:`ReportError` naming it and what to do."""
    from mgrq.runner.layout import labels as run_labels
    from mgrq.tracking import ORIGIN_FILE, ORIGIN_TAG, search

    here = run_labels(out, suite)
    if not here or here[-1] in known:
        return
    try:  # only a store these run folders were mirrored into says anything about them
        origin = (out.resolve() / ORIGIN_FILE).read_text().strip()
    except OSError:
        return
    if not any(r["tags"].get(ORIGIN_TAG) == origin for r in search(u, suite)):
        return
    newest = here[-1]
    cmd = shlex.join(["mgrq", "mirror", "--out", str(out), "--suite", suite, "--label", newest]
                     + (["--tracking-uri", u] if uri else []))
    raise ReportError(f"latest: label {newest}, the newest run of suite {suite} under {out.resolve() / suite}, has "
                      f"no run in MLflow {u}, whose newest is {known[-1] if known else 'none'}: no cell of it "
                      f"finished or failed, or it was not mirrored (`{cmd}`); expected it there, or name the "
                      "labels instead of latest/previous")


def _weights_notes(df: pd.DataFrame, pub: pd.DataFrame | None) -> list[str]:
    """Notes on the FP weights of the finished cells (each record's ``weights``): a model whose
    cells ran with different weights, and, beside published rows, a model that ran with weights
    other than timm's pinned ones (the weights the published rows were measured with)."""
    done = df[(df["status"] == "done") & df["weights"].notna()]
    out = []
    for model, ws in done.groupby("model", sort=False)["weights"]:
        counts = ws.value_counts()
        if len(counts) > 1:
            out.append(f"model {model}'s finished cells ran with different weights: "
                       + ", ".join(f"{w} ({n} cell{'s' * (n != 1)})" for w, n in counts.items())
                       + "; a table from one model needs one weights file")
    if pub is not None and len(pub):
        own = {m: ws.iloc[0] for m, ws in done.groupby("model", sort=False)["weights"]
               if m in set(pub["model"]) and not any(str(w).startswith("timm ") for w in ws)}
        if own:
            out.append("the published rows (marked) were measured with timm's pretrained weights; here "
                       + ", ".join(f"{m} ran with {w}" for m, w in own.items())
                       + ": compare the two only if that file holds the same weights")
    return out


def _order(found: list[str], preferred: list[str]) -> list[str]:
    return [x for x in preferred if x in found] + [x for x in dict.fromkeys(found) if x not in preferred]


def compile_pdf(dest: Path, fragments: list[str], stem: str = "tables") -> Path:
    """Wrap ``fragments`` (file names in ``dest``) in a minimal document and run pdflatex. Its
    ``.aux`` and ``.log`` are removed when it succeeds; a failure keeps the log, which the error names."""
    exe = shutil.which("pdflatex")
    if exe is None:
        raise ReportError("pdflatex not found (install texlive-latex-base texlive-latex-recommended)")
    body = "\n".join(rf"\input{{{f}}}" for f in fragments)
    (dest / f"{stem}.tex").write_text(
        "\\documentclass{article}\n\\usepackage[margin=1.5cm]{geometry}\n"
        "\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
        "\\makeatletter  % a page of tables starts at its top, its tables a float gap apart\n"
        "\\setlength{\\@fptop}{0pt}\\setlength{\\@fpsep}{\\floatsep}\\makeatother\n"
        "\\begin{document}\n"
        f"{body}\n\\end{{document}}\n"
    )
    proc = subprocess.run([exe, "-interaction=nonstopmode", "-halt-on-error", f"{stem}.tex"],
                          cwd=dest, capture_output=True, text=True, timeout=120)
    pdf = dest / f"{stem}.pdf"
    if proc.returncode != 0 or not pdf.is_file():
        err = [ln for ln in proc.stdout.splitlines() if ln.startswith("!")][:1]
        raise ReportError(f"pdflatex failed on {dest / (stem + '.tex')}: {err[0] if err else proc.returncode} "
                          f"(see {dest / (stem + '.log')})")
    for ext in ("aux", "log"):
        (dest / f"{stem}.{ext}").unlink(missing_ok=True)
    return pdf


# every file a report may write into its folder: tables, figures, pdflatex's files, the CSV
PDF_FILES = tuple(f"tables.{ext}" for ext in ("tex", "pdf", "aux", "log"))
OUTPUTS = tuple(f"{stem}.{ext}" for stem in ("main", "ablation", "paired", "cost", "setup", "notes") for ext in ("tex", "md")) + tuple(
    f"{stem}.{ext}" for stem in ("acc_vs_bits", "ablation", "acc_vs_time") for ext in ("pdf", "png")) + PDF_FILES + (
    "results.csv",)
MANIFEST = ".mgrq-report.json"  # the files the last report wrote into its folder


def _listed_files(dest: Path) -> list[str] | None:
    """The files the manifest of ``dest`` lists (None: no readable manifest)."""
    listed = (records.read_record(dest / MANIFEST) or {}).get("files")
    return [f for f in listed if isinstance(f, str)] if isinstance(listed, list) else None


def _check_dest_free(dest: Path, names: tuple[str, ...] | list[str], what: str) -> None:
    """Before any work: a ``--dest`` folder of the user's must not hold a file of a name the
    report writes that no report wrote (its manifest does not list it): that file would be
    overwritten or removed. ``ConfigError`` naming the files."""
    listed = set(_listed_files(dest) or [])
    clash = [n for n in names if (dest / n).exists() and n not in listed]
    if clash:
        raise ConfigError(f"{what} {dest}: holds {', '.join(clash[:4])}{', ...' if len(clash) > 4 else ''}, which no "
                          f"report listed as its own ({MANIFEST}): files of yours, or of an older report that wrote "
                          "no list; expected a new or empty folder, or one a report wrote: choose another --dest, "
                          "or move those files")


def _earlier_outputs(dest: Path, own_folder: bool) -> set[str]:
    """The files an earlier report left in ``dest``, which this one removes when it does not
    write them again (a PDF under --no-pdf, a table or figure it skips): those its manifest
    lists; without one, in a label's own report folder, every name a report writes; in a
    ``--dest`` folder of the user's, none (:func:`_check_dest_free` refused to write there if it
    held any)."""
    listed = _listed_files(dest)
    if listed is not None:
        return {f for f in listed if f in OUTPUTS}
    return set(OUTPUTS) if own_folder else set()


def _replace_outputs(dest: Path, earlier: set[str], written: list[Path], compiled: bool) -> None:
    """Remove the earlier report's files this one did not write, and list this one's (and the
    comparisons an earlier ``--compare`` listed)."""
    now = {p.name for p in written if p.parent == dest}
    if compiled:  # pdflatex's files, also when it failed
        now |= {f for f in PDF_FILES if (dest / f).exists()}
    for name in earlier - now:
        (dest / name).unlink(missing_ok=True)
    compared = {f for f in _listed_files(dest) or [] if f.startswith("compare-") and (dest / f).exists()}
    records.write_record(dest / MANIFEST, {"files": sorted(now | compared)})


def _unfinished_states(out: Path, suite: str, label: str, info: dict[str, Any], ids: list[str], df: pd.DataFrame,
                       source: str) -> dict[str, list[str]]:
    """The grid cells ``ids`` without a finished result, by what they are (as ``suite status``
    shows them): failed, interrupted, running, not started; from MLflow: failed, or no run."""
    from mgrq.runner.layout import Cell, grid_cells

    out_states: dict[str, list[str]] = {}
    if source == "records":
        root = Path(out).resolve() / suite / label
        dirs = {c["id"]: c.get("dir") for c in grid_cells(info)}
        for cid in ids:
            d = dirs.get(cid)
            st = Cell(cid, "", root / d, {}).shown_state()[0] if isinstance(d, str) else "pending"
            out_states.setdefault("not started" if st == "pending" else st, []).append(cid)
    else:
        failed = set(df.loc[df["status"] == "failed", "run_id"])
        stopped = {rid for lab, rid in df.attrs.get("interrupted") or [] if lab == label}
        for cid in ids:
            st = "failed" if cid in failed else "interrupted" if cid in stopped else "with no result in MLflow " \
                "(running or not started)"
            out_states.setdefault(st, []).append(cid)
    order = ("failed", "interrupted", "running", "not started")
    return dict(sorted(out_states.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _listed(items: list[str]) -> str:
    """The first three of ``items`` for a note, then ``...``."""
    return ", ".join(items[:3]) + (", ..." if len(items) > 3 else "")


REPORT_TABLES = ("main", "ablation", "paired", "cost", "setup")  # the .tex tables of a one-label report
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")  # a \label key that LaTeX and hyperref read as written


def floats(given: str | Sequence[str], tables: Sequence[str]) -> dict[str, str]:
    """The float of each of ``tables`` from the ``--float`` values: ``ENV`` for every table,
    ``TABLE=ENV`` for one (it wins over a plain ``ENV`` whatever their order); ENV is ``table`` or
    ``table*``. One ``ConfigError`` for a value that is neither, a table that is not one of
    ``tables`` (a did-you-mean), or two floats for the same table."""
    values = [given] if isinstance(given, str) else list(given)
    envs, expected = " or ".join(T.FLOATS), f"TABLE one of {', '.join(tables)}"
    every: str | None = None
    one: dict[str, str] = {}
    for v in values:
        name, sep, env = v.rpartition("=")
        if env not in T.FLOATS:
            raise ConfigError(f"--float {v}: expected {envs} (every table), or TABLE={T.FLOATS[1]} with {expected}")
        if sep and name not in tables:
            other = " (it is written by --compare)" if name == "compare" else \
                " (a one-label report writes it)" if name in REPORT_TABLES else ""
            hint = close_names(name, tables)
            mean = f" Did you mean {', '.join(repr(c) for c in hint)}?" if hint else ""
            raise ConfigError(f"--float {v}: {name!r} is not a table this command writes{other}.{mean} "
                              f"Expected {expected}")
        before = one.get(name) if sep else every
        if before is not None and before != env:
            what = f"table {name}" if sep else "every table"
            raise ConfigError(f"--float {v}: {what} was given {before} already; expected one float for each table")
        if sep:
            one[name] = env
        else:
            every = env
    return {t: one.get(t, every or T.FLOATS[0]) for t in tables}


def check_key(key: str | None, suite: str) -> str:
    """The key of the tables' ``\\label``s (``tab:KEY-main``): ``key``, by default the suite's name."""
    if key is None:
        return suite
    if not KEY_RE.fullmatch(key):
        raise ConfigError(f"--tex-key {key!r}: expected letters, digits and _ . : - (starting with a letter or "
                          "digit), as a \\label{tab:KEY-main} takes them")
    return key


def _make_dest(dest: Path, what: str) -> None:
    """Create the report folder (checked with ``records.check_writable`` before any work)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. no permission, or the path changed since it was checked
        raise ConfigError(f"{what} {dest}: cannot create the folder ({e.strerror or e}); "
                          f"expected a folder the report can be written to") from None


P = ParamSpec("P")
R = TypeVar("R")


def _row_names_scope(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` in a :func:`reports.tables.row_names` block: the suite's ``report.names`` it sets
    (``use_row_names``) end with it."""
    @functools.wraps(fn)
    def inner(*args: P.args, **kwargs: P.kwargs) -> R:
        with T.row_names():
            return fn(*args, **kwargs)
    return inner


@_row_names_scope
def build_report(out: str | Path, suite: str, label: str | None = None, source: str = "records",
                 dest: str | Path | None = None, published: bool | str | Path = True,
                 pdf: str = "auto", uri: str | None = None, figures: bool = True,
                 paired: str | None = None, float_env: str | Sequence[str] = "table",
                 suite_file: str | Path | None = None, fig_width: float = 7.0,
                 run_in_captions: bool = True, tex_key: str | None = None) -> Report:
    """Tables and figures of one label of a suite. ``pdf``: ``auto`` (compile when pdflatex is
    installed), ``yes`` (must compile) or ``no``. ``float_env``: ``table`` or ``table*`` (for
    a two-column paper), the float of every ``.tex`` table, or a list of such values and
    ``TABLE=ENV`` for one table (:func:`floats`). ``tex_key``: the tables' ``\\label`` key
    (``tab:KEY-main``; default the suite's name). ``paired``: the reference method of the paired
    table (default: the suite's ``report.paired``; ``"none"``: no paired table). An explicit
    ``paired`` that is not a method of the label fails before anything is written; the suite's
    setting is skipped with a note instead (a partial run, or an old label). ``fig_width``: the
    figures' width in inches, to include them at 100% (7: a text width; 3.5: a column).
    ``run_in_captions=False``: captions without ``suite S (L)`` (for a paper). ``suite_file``: the
    file whose ``report:`` block (ablation, caption, paired, names, main) wins over the label's, with a
    note naming what differs (see :func:`suite_info`). A ``dest`` that
    cannot be a folder, or a bad published CSV, also fails before anything is written."""
    envs, key = floats(float_env, REPORT_TABLES), check_key(tex_key, suite)
    if not 2.0 <= fig_width <= 20.0:  # NaN too
        raise ConfigError(f"--fig-width {fig_width}: expected inches between 2 and 20 (7: a text width, "
                          "3.5: one column of a two-column paper)")
    out = Path(out)
    what = "--dest" if dest else "report folder"
    dest = records.check_writable(dest, what, folder=True) if dest else None
    own_folder = dest is None
    if dest is not None:
        _check_dest_free(dest, OUTPUTS, what)
    given = label
    label = _label(out, suite, label, source, uri)
    dest = dest or records.check_writable(out.resolve() / suite / label / "report", what, folder=True)
    df = load_frame(out, suite, [label], source, uri)
    if df.empty:
        bad = df.attrs.get("unreadable") or []
        why = (f": its {len(bad)} record file(s) are unreadable or malformed ({_listed(bad)}); rerun the suite to "
               "redo those cells" if bad else "")
        if given in (None, "latest") and source == "records":  # the newest label: say which one has results
            from mgrq.runner.layout import labels as run_labels

            older = next((lab for lab in reversed(run_labels(out, suite)) if lab != label
                          and len(F.records_frame(out, suite, [lab]))), None)
            if older is not None:
                why += (f"; the newest label with finished cells is {older} "
                        f"(`mgrq report {suite}{out_flag(out)} --label {older}`)")
        raise ReportError(f"suite {suite} [{label}]: no finished cells to report (source: {source}){why}")
    info = suite_info(out, suite, label, suite_file)
    T.use_row_names(info.get("names"))
    T.use_run_in_captions(run_in_captions)
    models = _order(list(df["model"]), info.get("models") or [])
    names = _order(list(df["name"]), info.get("methods") or [])
    notes: list[str] = []
    if info.get("from_file"):
        notes.append(_from_file_note(info["from_file"], suite_file, suite, label, out))
    full: list[tuple[str, list[str]]] = []  # the lists that a note names only the first of, for notes.md

    def listed(items: list[str], what: str) -> str:
        if len(items) > 3:
            full.append((what, items))
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more, listed in notes.md" if len(items) > 3 else "")

    if paired not in (None, "none") and paired not in names:
        if paired in (info.get("methods") or []):
            raise ConfigError(f"--paired {paired}: a method of suite {suite} with no finished cell in label {label}; "
                              f"expected one of {', '.join(names)} (or none)")
        from mgrq.errors import close_names

        close = close_names(paired, names)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"--paired {paired}: not a method of suite {suite} [{label}]{hint}; "
                          f"expected one of {', '.join(names)} (or none)")
    reference = paired if paired is not None else info.get("paired")
    if reference == "none":
        reference = None
    if reference and reference not in names:
        notes.append(f"paired table skipped: the suite's report.paired {reference} has no cells in this label")
        reference = None
    unreadable = df.attrs.get("unreadable") or []
    if unreadable:
        notes.append(f"{len(unreadable)} record file(s) left out, unreadable or malformed (rerun the suite to "
                     f"redo those cells): {listed(unreadable, 'record files left out, unreadable or malformed')}")
    other = df.attrs.get("other_settings") or []
    if other:
        notes.append(f"{len(other)} record(s) left out: they ran with other settings than the label's grid as last run "
                     f"(its suite.json: the suite file or an option changed; `mgrq suite status` shows those cells "
                     f"pending; a `suite run` with the settings they ran with counts them again, one with the new "
                     f"settings redoes them): {listed(other, 'records left out, run with other settings')}")
    superseded = df.attrs.get("superseded") or []
    if superseded:
        notes.append(f"{len(superseded)} record(s) left out: the label holds a newer record of the same cell "
                     f"(a rerun with other options): {listed(superseded, 'records left out, superseded by a newer record')}")
    from mgrq.runner.layout import grid_cells

    grid = [c["id"] for c in grid_cells(info)]
    finished = set(df.loc[df["status"] == "done", "run_id"])
    missing = [c for c in grid if c not in finished]
    if missing:
        states = _unfinished_states(out, suite, label, info, missing, df, source)
        notes.append(f"{len(missing)} of the {len(grid)} cells of the grid have no finished result: "
                     + "; ".join(f"{len(ids)} {st} ({listed(ids, f'cells {st}')})" for st, ids in states.items())
                     + f"; `mgrq suite status {suite}{out_flag(out)} --label {label}` lists them")
        gone_rows = [n for n in dict.fromkeys(info.get("methods") or []) if n not in names]
        gone_cols = [m for m in dict.fromkeys(info.get("models") or []) if m not in models]
        if gone_rows or gone_cols:
            notes.append("the tables have " + " and ".join(
                f"no {what} for {', '.join(v)}" for what, v in (("row", gone_rows), ("column", gone_cols)) if v)
                + ": none of their cells has a result yet")
    elif source == "records" and records.read_record(out.resolve() / suite / label / "suite.json") is None:
        notes.append(f"the label's suite.json is missing or unreadable, so the tables cannot say which cells of "
                     f"the grid have no result (`mgrq suite status {suite}{out_flag(out)} --label {label}`)")
    warned = list(df.loc[(df["status"] == "done") & (df["warnings"] > 0), "run_id"])
    if warned:
        notes.append(f"{len(warned)} finished cell(s) ran with a warning: a unit's output error rose during "
                     f"reconstruction (the record's warnings name it; a learning rate may be too high): "
                     f"{listed(warned, 'finished cells that ran with a warning')}")
    shas = df.loc[df["status"] == "done", "git_sha"].fillna("unknown").value_counts()
    if len(shas) > 1:  # one table from several versions of the code: say which, and how many cells each
        notes.append(f"the finished cells ran from {len(shas)} source trees (each record's git_sha): "
                     + ", ".join(f"{records.short_sha(s)} ({n} cell{'s' * (n != 1)})" for s, n in shas.items())
                     + "; a table from one version needs one label run at one commit")
    mixed = F.mixed_settings(df)
    splits = F.splits(df)
    if len(splits) > 1:  # one table would average tune and held-out numbers under one caption
        raise ReportError(f"suite {suite} [{label}]: its finished cells were evaluated on two splits ("
                          + ", ".join(f"{n} {SPLIT_NAMES.get(k, k)}, e.g. {ids[0]}" for k, (n, ids) in splits.items())
                          + "); expected one split per label: move one split's cell folders into a label of their own")
    tune = "tune" in splits
    ablation = [a for a in info.get("ablation") or [] if a in names]
    differ = F.row_differences(df, ablation)
    setups = F.row_setups(df, names)
    unloaded = sorted({m for _, m, _, _ in setups} - F.registered_methods())
    if unloaded:
        notes.append(f"method(s) {', '.join(unloaded)} are not registered in this process, so the setup table "
                     "cannot say which of their settings differ from the defaults (a method of your own: name its "
                     "module in $MGRQ_METHODS, as for the run)")
    df.attrs.pop("settings", None)  # pandas copies attrs into every frame derived from df
    if mixed:  # e.g. a rerun of some cells with --eval-limit, or of an edited suite, in the same label
        notes.append("the finished cells put side by side ran with different settings (a rerun of some cells "
                     "with other options or an edited suite file keeps the older cells' results): "
                     + "; ".join(mixed) + "; rerun those cells with one setting, or use a new --label")
    if differ:
        notes.append("the ablation table's rows differ in more than the parts each switches off: "
                     + "; ".join(differ) + "; check that these are the differences the ablation is about")
    pub = None
    if published and not tune:  # published numbers are on val/; a tune split is drawn from training images
        pub = F.published_frame(None if published is True else published)
    notes += _weights_notes(df, pub)
    agg = F.aggregate(df, F.grid_seeds(grid))
    _make_dest(dest, what)
    earlier = _earlier_outputs(dest, own_folder)
    rep = Report(dest=dest, frame=df, notes=notes)
    evals = df.loc[df["status"] == "done", "n_eval"].dropna()
    n_eval: float | tuple[float, float] | None = None
    if evals.nunique() == 1:
        n_eval = float(evals.iloc[0])
    elif len(evals):  # e.g. a rerun of some cells with --eval-limit: the caption gives the range
        n_eval = (float(evals.min()), float(evals.max()))
        sizes = evals.astype(int).value_counts().sort_index()
        rep.notes.append("the finished cells were evaluated on different numbers of images: "
                         + ", ".join(f"{k} ({n} cell{'s' * (n != 1)})" for k, n in sizes.items())
                         + "; a mean over them mixes evaluations (`results.csv` has each cell's n_eval)")
    main_rows = [n for n in names if n in (info.get("main") or names)]  # report.main: the paper's rows
    if not main_rows:
        rep.notes.append(f"report.main ({', '.join(info.get('main') or [])}): none of its rows has a result in this "
                         "label; the main table and figures show every row")
        main_rows = names
    main = T.main_table(agg, models, main_rows, suite, label, pub, info.get("caption"), n_eval, info.get("bits"),
                        tune=tune, calib={name: calib for name, _, calib, _ in setups})
    fragments: list[str] = []

    def write(stem: str, table: T.Table) -> str:
        """Write a table's .tex (with its float and \\label) and .md; its markdown."""
        table.float_env, table.label = envs[stem], T.tex_label(key, stem)
        (dest / f"{stem}.tex").write_text(table.latex())
        (dest / f"{stem}.md").write_text(md := table.markdown())
        rep.tables += [dest / f"{stem}.tex", dest / f"{stem}.md"]
        fragments.append(f"{stem}.tex")
        return md

    rep.main_markdown = write("main", main)
    if ablation:
        write("ablation", T.ablation_table(agg, models, ablation, suite, label, info.get("bits"), n_eval, tune=tune))
    pt = T.paired_table(df, reference, models, names, suite, label, info.get("bits"), n_eval, tune=tune) if reference else None
    if pt is not None and not pt.groups:
        rep.notes.append(f"paired table skipped: no finished cell pairs with {reference} by seed")
    elif pt is not None:
        rep.paired_markdown = write("paired", pt)
    write("cost", T.cost_table(agg, models, names, suite, label, info.get("bits")))
    (dest / "setup.tex").write_text(T.setup_latex(setups, suite, label, envs["setup"], key))
    (dest / "setup.md").write_text(T.setup_markdown(setups, suite, label))
    rep.tables += [dest / "setup.tex", dest / "setup.md"]
    fragments.append("setup.tex")
    df.assign(**{k: F.as_counts(df[k]) for k in ("n_eval", "cpu_threads")}).to_csv(dest / "results.csv", index=False)
    rep.tables.append(dest / "results.csv")
    if figures:
        from reports import plots

        with plots.figure_width(fig_width), plots.main_rows(main_rows if info.get("main") else []):
            # a row keeps its colour in every figure: styles by its place in all the rows (names)
            rep.figures += plots.accuracy_vs_bits(agg, models, main_rows, dest, order=names)
            if ablation:
                rep.figures += plots.ablation_bars(agg, models, ablation, dest, info.get("bits"), names)
            rep.figures += plots.accuracy_vs_time(agg[agg["name"].isin(main_rows)], dest, names, models)
        for stem, inches in plots.too_tall(rep.figures):
            rep.notes.append(f"figure {stem} is {inches:.1f} in tall at --fig-width {fig_width:g} (a page's text is "
                             "about 9 in): its panels stack one a row; a wider figure (--fig-width 7, in a figure*) "
                             "puts them side by side")
    # what the tables leave out, kept beside them and at the end of tables.pdf (none: no files)
    notes_md, notes_tex = dest / "notes.md", dest / "notes.tex"
    if rep.notes:
        in_md = [n.replace(", listed in notes.md", ", listed below") for n in rep.notes]
        notes_md.write_text(f"# Notes on {suite} [{label}]\n\n" + "".join(f"- {n}\n" for n in in_md)
                            + "".join(f"\n## {len(items)} {what}\n\n" + "".join(f"- {i}\n" for i in items)
                                      for what, items in full))
        notes_tex.write_text(T.notes_latex(rep.notes, suite, label))
        rep.tables += [notes_md, notes_tex]
        fragments.append("notes.tex")
    try:
        if pdf != "no":
            try:
                rep.pdf = compile_pdf(dest, fragments)
            except ReportError as e:
                if pdf == "yes":
                    raise
                rep.pdf_note = str(e)
    finally:
        _replace_outputs(dest, earlier, [*rep.tables, *rep.figures], pdf != "no")
    return rep


@_row_names_scope
def build_compare(out: str | Path, suite: str, label_a: str, label_b: str, threshold: float = 1.0,
                  source: str = "records", uri: str | None = None,
                  dest: str | Path | None = None, float_env: str | Sequence[str] = "table",
                  suite_file: str | Path | None = None,
                  tex_key: str | None = None) -> tuple[pd.DataFrame, list[Path], str]:
    """Delta table between two labels of a suite; flags cells that moved by more than
    ``threshold`` points of top-1, newly failed, gained warnings or have no result in B
    (:func:`reports.tables.compare_frame`). Returns (frame, files, markdown); the frame's
    ``attrs["notes"]`` says where the printed names came from when ``suite_file`` gave them (as
    :func:`build_report`). ``float_env`` and ``tex_key`` as :func:`build_report`'s (its table: ``compare``)."""
    env, key = floats(float_env, ("compare",))["compare"], check_key(tex_key, suite)
    if not 0 <= threshold < float("inf"):  # NaN too: no delta would be flagged
        raise ConfigError(f"--threshold {threshold}: expected a finite number >= 0 (points of top-1)")
    out = Path(out)
    what = "--dest" if dest else "report folder"
    dest = records.check_writable(dest, what, folder=True) if dest else None
    if _is_csv(label_b):
        raise ConfigError(f"--compare {label_a} {label_b}: LABEL_B is a file; expected a label of suite {suite}'s runs "
                          "(a results.csv may be LABEL_A: the numbers to compare the run with)")
    csv_a = None
    if _is_csv(label_a):  # named as the file it is (a quoted ~ reaches us unexpanded)
        label_a = str(Path(label_a).expanduser())
        csv_a = _csv_side(Path(label_a), suite)
    b = _label(out, suite, label_b, source, uri)
    a = f"csv-{csv_a['label'].iloc[0]}" if csv_a is not None else _label(out, suite, label_a, source, uri)
    if a == b:
        raise ConfigError(f"--compare {label_a} {label_b}: both are label {a}; expected two different runs")
    df = load_frame(out, suite, [b] if csv_a is not None else [a, b], source, uri)
    if csv_a is not None:
        attrs = df.attrs  # the run's (unreadable records, interrupted cells, settings): the CSV keeps none
        df = pd.concat([csv_a.assign(label=a), df], ignore_index=True)
        df.attrs = attrs
    for lab in (a, b):  # a run that recorded nothing would compare as "every cell missing", flagged or not
        if not (df["label"] == lab).any():
            raise ReportError(f"--compare: label {lab} of suite {suite} has no cell records (no cell finished or "
                              f"failed); expected two runs with records (`mgrq suite status {suite}{out_flag(out)} --label {lab}`)")
    stem = f"compare-{a}-vs-{b}"
    files = [f"{stem}.{e}" for e in ("md", "tex", "csv")]
    if dest is not None:
        _check_dest_free(dest, files, what)
    fa, fb = df[df["label"] == a], df[df["label"] == b]
    sa, sb = F.splits(fa), F.splits(fb)
    if csv_a is None and sa and sb and set(sa) != set(sb):  # a delta between tune and held-out numbers measures nothing
        said = [f"{lab} on {' and '.join(SPLIT_NAMES.get(k, k) for k in sp)}" for lab, sp in ((a, sa), (b, sb))]
        raise ReportError(f"--compare {label_a} {label_b}: the finished cells of {said[0]}, of {said[1]}; "
                          "expected two labels evaluated on one split")
    changes = F.settings_changes(fa, fb)
    info = suite_info(out, suite, b, suite_file)
    T.use_row_names(info.get("names"))
    stopped = {tuple(cell) for lab, *cell in df.attrs.get("interrupted_cells", []) if lab == b}
    cmp = T.compare_frame(fa, fb, threshold, info.get("models"), info.get("methods"), info.get("bits"), stopped)
    dest = dest or records.check_writable(out.resolve() / suite / b / "report", what, folder=True)
    _make_dest(dest, what)
    md = T.compare_markdown(cmp, a, b, threshold, changes)
    csv_note = _csv_note(label_a, fa, fb, "warnings" in csv_a) if csv_a is not None else None
    if csv_note:  # in the file too: what the comparison could not check, and what stands in for it
        md += f"\n{csv_note[0].upper()}{csv_note[1:]}.\n"
    (dest / f"{stem}.md").write_text(md)
    (dest / f"{stem}.tex").write_text(T.compare_latex(cmp, suite, a, b, threshold, changes, env, key))
    cmp.to_csv(dest / f"{stem}.csv", index=False)
    records.write_record(dest / MANIFEST, {"files": sorted({*(_listed_files(dest) or []), *files})})
    # a comparison prints only the names of the report block
    cmp.attrs["notes"] = [_from_file_note(["names"], suite_file, suite, b, out)] if "names" in info.get("from_file", []) else []
    if csv_note:
        cmp.attrs["notes"].append(csv_note)
    return cmp, [dest / f for f in files], md


CSV_COLUMNS = ("suite", "label", "run_id", "hash", "model", "name", "bits", "seed", "status", "top1")


def _is_csv(arg: str) -> bool:
    """Whether a --compare argument names a results.csv rather than a label."""
    return arg.endswith(".csv")


def _csv_side(path: Path, suite: str) -> pd.DataFrame:
    """The cells of ``suite`` in a report's ``results.csv`` (a shipped one, or another machine's),
    as the A side of a comparison: one label's, with the columns a comparison reads, each value of
    them checked (a bad one, or a cell on two lines, is a ``ConfigError`` naming its line)."""
    what = f"--compare {path}"
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file; expected a report's results.csv or a label") from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise ConfigError(f"{what}: not a readable CSV ({first_line(e)}); expected a report's results.csv") from None
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{what}: no column {', '.join(missing)}; expected a report's results.csv "
                          f"(columns {', '.join(CSV_COLUMNS)}, ...)")
    df = df[df["suite"] == suite]
    labels = sorted({str(x) for x in df["label"]})
    if len(labels) != 1:
        raise ConfigError(f"{what}: {'no cell' if not labels else 'cells of labels ' + ', '.join(labels)} of suite "
                          f"{suite}; expected the cells of one label of it")

    def bad(col: str, ok: pd.Series, expected: str) -> None:
        if not ok.all():
            i = ok.index[~ok.to_numpy()][0]  # the file's line: a header, then one row per index
            v = df.at[i, col]
            raise ConfigError(f"{what}: line {i + 2}, column {col} is {'blank' if pd.isna(v) else repr(str(v))}; "
                              f"expected {expected}")

    def number(col: str) -> pd.Series:
        return pd.to_numeric(df[col], errors="coerce")

    def count(x: pd.Series) -> pd.Series:  # a finite whole number >= 0
        return x.notna() & np.isfinite(x) & (x >= 0) & (x == x.round())

    bad("bits", df["bits"].astype(str).str.fullmatch(r"W\d+A\d+"), "a bit-width as WxAy, e.g. W4A4")
    seed = number("seed")
    bad("seed", count(seed), "a seed, a whole number >= 0")
    bad("status", df["status"].isin(("done", "failed")), "done or failed")
    top1 = number("top1")
    bad("top1", (top1.notna() & np.isfinite(top1)) | df["top1"].isna(), "a number of percent, or blank for a failed cell")
    warnings = number("warnings") if "warnings" in df else None  # an older CSV has no such column
    if warnings is not None:
        bad("warnings", count(warnings) | df["warnings"].isna(), "a count (a whole number >= 0), or blank")
    df = df.assign(seed=seed.astype(int), top1=top1, **({"warnings": warnings} if warnings is not None else {}))
    key = ["model", "name", "bits", "seed"]
    twice = df.index[df.duplicated(key, keep=False).to_numpy()]
    if len(twice):
        r = df.loc[twice[0]]
        same = [i + 2 for i in twice if (df.loc[i, key] == r[key]).all()]  # the lines of that one cell
        raise ConfigError(f"{what}: cell {r['model']}.{r['name']}.{str(r['bits']).lower()}.s{r['seed']} is on lines "
                          f"{', '.join(map(str, same))} (two files joined?); expected one row per cell, as a "
                          "report writes it")
    return df.reset_index(drop=True)


def _csv_note(path: str, a: pd.DataFrame, b: pd.DataFrame, has_warnings: bool = True) -> str:
    """What the comparison with a results.csv can and cannot say: it keeps no settings, but each
    cell's hash says whether the two ran the same spec."""
    key = ["model", "name", "bits", "seed"]
    both = a[[*key, "hash"]].merge(b[[*key, "hash"]], on=key, suffixes=("_a", "_b"))
    other = both[both["hash_a"].astype(str) != both["hash_b"].astype(str)]
    said = f"{len(both) - len(other)} of {len(both)} cells in both have the same hash (the same spec)"
    if len(other):
        said += "; another hash: " + ", ".join(f"{r.model}.{r.name}.{r.bits.lower()}.s{r.seed}"
                                                for r in other.head(5).itertuples()) + (" ..." if len(other) > 5 else "")
    if not has_warnings:
        said += "; it has no warnings column, so no cell is flagged for new warnings"
    return f"A is {path}: a results.csv keeps no settings, so none are compared; {said}"
