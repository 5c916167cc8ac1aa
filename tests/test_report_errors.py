"""Reports on awkward inputs: a model (the first panel of the figure) or a whole label with no
finished cell still gives the tables and figures; a bad ``--published-csv`` or ``--dest`` fails
with one line naming the path and what was expected (exit 2 from the CLI), before anything is
written.

The inputs are run records written in the runner's layout under ``tmp_path``.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from mgrq import records
from mgrq.cli import main
from mgrq.errors import ConfigError
from mgrq.spec import RunSpec
from reports import plots
from reports.build import build_report
from reports.frame import published_frame


def put(out: Path, suite: str, label: str, model: str, method: str, seed: int, top1: float | None,
        variant: str | None = None) -> None:
    """A W4A4 cell record: done with ``top1``, or failed when it is None."""
    spec = RunSpec(model=model, method=method, w_bits=4, a_bits=4, seed=seed, variant=variant)
    rec = {"schema": 1, "id": spec.run_id, "hash": spec.content_hash, "spec": spec.to_dict(),
           "suite": {"name": suite, "label": label}, "started": records.now(), "finished": records.now()}
    if top1 is None:
        rec.update(status="failed", error={"type": "RuntimeError", "message": "boom", "traceback": ""})
    else:
        rec.update(status="done", metrics={"top1": top1, "top5": 99.0, "fp_top1": 80.0, "fp_top5": 99.5,
                                           "n_eval": 50.0},
                   timings={"quantize_s": 2.0, "total_s": 3.0}, peak_mem_mb=100.0,
                   calibration={"n": 32, "seed": seed, "ids_hash": "x"})
    records.write_record(out / suite / label / f"{spec.run_id}-{spec.content_hash}" / "record.json", rec)


def make_suite(out: Path, failed_models: tuple[str, ...], suite: str = "s") -> None:
    """Models tiny_vit (first) and deit_tiny_patch16_224, methods percentile and repq_vit (and the
    ablation variant pct-mm), seeds 0 and 1; every cell of ``failed_models`` failed."""
    records.write_record(out / suite / "L" / "suite.json", {
        "created": "2026-01-01T00:00:00", "models": ["tiny_vit", "deit_tiny_patch16_224"],
        "methods": ["percentile", "repq_vit", "pct-mm"], "bits": ["W4A4"], "ablation": ["percentile", "pct-mm"]})
    for model in ("tiny_vit", "deit_tiny_patch16_224"):
        bad = model in failed_models
        for seed in (0, 1):
            put(out, suite, "L", model, "percentile", seed, None if bad else 70.0 + seed)
            put(out, suite, "L", model, "repq_vit", seed, None if bad else 75.0)
            put(out, suite, "L", model, "percentile", seed, None if bad else 60.0, variant="pct-mm")


FIGURES = sorted(f"{s}.{e}" for s in ("acc_vs_bits", "ablation", "acc_vs_time") for e in ("pdf", "png"))


def test_first_model_with_no_finished_cell(tmp_path, monkeypatch):
    """The first panel has no line: the legend comes from the other panels; tables show fail."""
    out = tmp_path / "runs"
    make_suite(out, failed_models=("tiny_vit",))
    legends: dict[str, list[str]] = {}
    save = plots._save

    def spy(fig, dest, stem):
        legends[stem] = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
        return save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    rep = build_report(out, "s", "L", pdf="no", published=False)
    assert sorted(p.name for p in rep.figures) == FIGURES
    for p in rep.figures:
        assert p.is_file() and p.stat().st_size > 1000
    assert legends["acc_vs_bits"] == ["Percentile", "RepQ-ViT", "pct-mm", "Full Prec."]  # from panel 2
    md = (rep.dest / "main.md").read_text()
    assert "| Method | W/A | tiny ViT | DeiT-T |" in md
    assert "| Percentile | 4/4 | fail | 70.50 ± 0.71 |" in md
    assert "| RepQ-ViT | 4/4 | fail | **75.00** ± 0.00 |" in md
    assert (rep.dest / "main.tex").is_file() and (rep.dest / "cost.md").is_file()
    assert "| pct-mm | 4/4 | fail | 60.00 ± 0.00 |" in (rep.dest / "ablation.md").read_text()
    assert len((rep.dest / "results.csv").read_text().splitlines()) == 1 + 12


def test_a_method_keeps_its_colour_in_every_panel(tmp_path, monkeypatch):
    """Percentile failed on the first model only: RepQ-ViT must not take Percentile's colour there."""
    from matplotlib.colors import to_rgba

    out = tmp_path / "runs"
    records.write_record(out / "s" / "L" / "suite.json", {"created": "x", "models": ["tiny_vit", "tiny_deit"],
                                                          "methods": ["percentile", "repq_vit"], "bits": ["W4A4"]})
    for model in ("tiny_vit", "tiny_deit"):
        put(out, "s", "L", model, "percentile", 0, None if model == "tiny_vit" else 70.0)
        put(out, "s", "L", model, "repq_vit", 0, 75.0)
    colours: list[dict[str, object]] = []
    save = plots._save

    def spy(fig, dest, stem):
        if stem == "acc_vs_bits":
            for ax in fig.axes:  # one errorbar container per drawn method
                colours.append({c.get_label(): to_rgba(c.lines[0].get_color()) for c in ax.containers})
        if stem == "acc_vs_time":  # the legend's method keys
            (lg,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]
            colours.append({t.get_text(): to_rgba(h.get_markeredgecolor()) for t, h in zip(lg.get_texts(), lg.legend_handles)})
        return save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    build_report(out, "s", "L", pdf="no", published=False)
    first, second, scatter = colours
    assert "Percentile" not in first and first["RepQ-ViT"] == second["RepQ-ViT"] != second["Percentile"]
    # and the same colours in the accuracy vs time figure
    assert (scatter["Percentile"], scatter["RepQ-ViT"]) == (second["Percentile"], second["RepQ-ViT"])


def test_methods_get_distinct_colours_up_to_20():
    for n in (1, 10, 11, 20):  # the ablation suite plots 11 methods
        assert len({str(c) for c in plots._colours(n)}) == n


def test_first_model_failed_through_the_cli(tmp_path, capsys):
    out = tmp_path / "runs"
    make_suite(out, failed_models=("tiny_vit",))
    assert main(["report", "s", "--out", str(out), "--no-pdf", "--dest", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "acc_vs_bits.png").is_file() and (tmp_path / "r" / "main.md").is_file()
    assert "Traceback" not in capsys.readouterr().err


def test_label_with_every_cell_failed(tmp_path, monkeypatch):
    """No line, bar or point at all: the figures are written without a legend (and without
    matplotlib's "no artists" warning), the tables show fail."""
    out = tmp_path / "runs"
    make_suite(out, failed_models=("tiny_vit", "deit_tiny_patch16_224"))
    legends: dict[str, int] = {}
    save = plots._save

    def spy(fig, dest, stem):
        legends[stem] = len(fig.legends) + sum(ax.get_legend() is not None for ax in fig.axes)
        return save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        rep = build_report(out, "s", "L", pdf="no", published=False)
    assert sorted(p.name for p in rep.figures) == FIGURES
    assert legends == {"acc_vs_bits": 0, "ablation": 0, "acc_vs_time": 0}
    assert "| Percentile | 4/4 | fail | fail |" in rep.main_markdown
    assert "| pct-mm | 4/4 | fail | fail |" in (rep.dest / "ablation.md").read_text()


# --published-csv ---------------------------------------------------------------------------

HEADER = "method,bits,model,top1,citation\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_published_csv_reads_a_valid_file(tmp_path):
    p = write(tmp_path / "pub.csv", "# a comment\n" + HEADER + "fp,FP,tiny_vit,81.5,\"A, B (2023)\"\n"
              "repq_vit,w4a4,tiny_vit,60,A\n")
    df = published_frame(p)
    assert list(df["bits"]) == ["FP", "W4A4"] and list(df["top1"]) == [81.5, 60.0]
    assert list(df["citation"]) == ["A, B (2023)", "A"] and set(df["source"]) == {"published"}


@pytest.mark.parametrize("text, match", [
    (None, r"published CSV .*nope\.csv: file not found; expected a CSV with the columns method, bits, "
           r"model, top1, citation"),
    ("method,model,top1,citation\nfp,tiny_vit,80,A\n",
     r"pub\.csv: missing column\(s\) bits \(header: method, model, top1, citation\); expected a CSV "
     r"with the columns method, bits, model, top1, citation"),
    ("model,top1\n", r"missing column\(s\) method, bits, citation "),
    ("", r"pub\.csv: no header line; expected a CSV with the columns"),
    ("# only a comment\n" + HEADER + "fp,FP,tiny_vit,80,A\nfp,W4A4,tiny_vit,abc,A\n",
     r"pub\.csv: line 4: top1 'abc' is not a number; expected the top-1 in %"),
    (HEADER + "fp,FP,tiny_vit,180,A\n", r"line 2: top1 180 is out of range; expected the top-1 in %, between 0 and 100"),
    (HEADER + "fp,FP,tiny_vit,nan,A\n", r"line 2: top1 nan is out of range"),
    (HEADER + "fp,W4,tiny_vit,70,A\n", r"line 2: bit-width 'W4': expected WxAy, e\.g\. W4A4 or w6a6, or FP"),
    (HEADER + "fp,FP,tiny_vit,70,Li et al., 2023\n", r"line 2: 6 fields, expected 5 \(quote a citation that contains commas\)"),
    (HEADER + "fp,FP,tiny_vit\n", r"line 2: no value for top1, citation"),
    (HEADER + "fp,FP,,70,A\n", r"line 2: empty model; expected a name"),
    (HEADER + "fp,FP,tiny_vit,70,\n", r"line 2: empty citation; expected the paper the number is copied from"),
])
def test_published_csv_errors_name_the_file_and_the_problem(tmp_path, text, match):
    p = tmp_path / "nope.csv" if text is None else write(tmp_path / "pub.csv", text)
    with pytest.raises(ConfigError, match=match) as e:
        published_frame(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_published_csv_not_readable(tmp_path):
    with pytest.raises(ConfigError, match=r"published CSV .*: is a folder; expected a CSV"):
        published_frame(tmp_path)
    p = tmp_path / "bin.csv"
    p.write_bytes(HEADER.encode() + b"fp,FP,tiny_vit,\xff\xfe,A\n")
    with pytest.raises(ConfigError, match=r"bin\.csv: not UTF-8 text"):
        published_frame(p)


@pytest.mark.parametrize("text, match", [
    (None, r"^error: published CSV \S*nope\.csv: file not found; expected a CSV with the columns"),
    ("method,model,top1,citation\nfp,tiny_vit,80,A\n", r"^error: published CSV \S*pub\.csv: missing column\(s\) bits "),
    (HEADER + "fp,FP,tiny_vit,high,A\n", r"^error: published CSV \S*pub\.csv: line 2: top1 'high' is not a number"),
])
def test_published_csv_cli_one_line_exit_2_nothing_written(tmp_path, capsys, text, match):
    out = tmp_path / "runs"
    make_suite(out, failed_models=())
    p = tmp_path / "nope.csv" if text is None else write(tmp_path / "pub.csv", text)
    dest = tmp_path / "r"
    assert main(["report", "s", "--out", str(out), "--no-pdf", "--dest", str(dest), "--published-csv", str(p)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.match(match, err), err
    assert not dest.exists()
    assert len(list((out / "s" / "L").glob("*/record.json"))) == 12  # the records are untouched


# --dest ------------------------------------------------------------------------------------

def test_dest_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    out = tmp_path / "runs"
    make_suite(out, failed_models=())
    f = write(tmp_path / "r.json", "{}")
    assert main(["report", "s", "--out", str(out), "--no-pdf", "--dest", str(f)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --dest '{f}' is a file; expected a folder (existing or to be created)\n"
    assert f.read_text() == "{}"
    below = f / "sub" / "report"
    with pytest.raises(ConfigError, match=rf"--dest '{below}': '{f}' is a file, so nothing can be created below it; expected a folder"):
        build_report(out, "s", "L", pdf="no", dest=below)
    # checked before the label is resolved or any record is read
    with pytest.raises(ConfigError, match=r"--dest '.*r\.json' is a file"):
        build_report(out, "s", "no-such-label", pdf="no", dest=f)
    assert main(["report", "s", "--out", str(out), "--compare", "L", "L", "--dest", str(f)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --dest '{f}' is a file; expected a folder")
    assert not (out / "s" / "L" / "report").exists()


def test_dest_that_is_a_folder_or_new_works(tmp_path):
    out = tmp_path / "runs"
    make_suite(out, failed_models=())
    (tmp_path / "old").mkdir()
    for d in (tmp_path / "old", tmp_path / "new" / "deeper"):
        rep = build_report(out, "s", "L", pdf="no", dest=d, figures=False)
        assert rep.dest == d and (d / "main.md").is_file()


def test_cells_without_a_result_are_marked_and_named_by_state(tmp_path, monkeypatch):
    """A mean over fewer seeds than the grid has is marked like one with a failed seed; the note
    says what the unfinished cells are (as `suite status` does); a method or model with no result
    at all, which the tables cannot show, is named."""
    out = tmp_path / "runs"
    root = out / "s" / "L"
    put(out, "s", "L", "tiny_vit", "percentile", 0, 70.0)
    put(out, "s", "L", "tiny_vit", "percentile", 1, 72.0)
    put(out, "s", "L", "tiny_vit", "repq_vit", 0, 75.0)  # seed 1: never started
    put(out, "s", "L", "tiny_vit", "qdrop", 0, None)  # qdrop: one running, one interrupted
    put(out, "s", "L", "tiny_vit", "qdrop", 1, None)
    specs = [RunSpec(model="tiny_vit", method=m, w_bits=4, a_bits=4, seed=s)
             for m in ("percentile", "repq_vit", "qdrop") for s in (0, 1)]
    cells = [{"id": sp.run_id, "hash": sp.content_hash, "dir": f"{sp.run_id}-{sp.content_hash}"} for sp in specs]
    records.write_record(root / "suite.json", {"created": "2026-01-01T00:00:00", "models": ["tiny_vit"],
                                               "methods": ["percentile", "repq_vit", "qdrop"], "bits": ["W4A4"],
                                               "cells": cells})
    running, stopped = (root / cells[i]["dir"] / "record.json" for i in (4, 5))
    records.write_record(running, {**json.loads(running.read_text()), "status": "running"})
    records.write_record(stopped, {**json.loads(stopped.read_text()),
                                   "error": {"type": "Interrupted", "message": "stopped", "traceback": ""}})
    rep = build_report(out, "s", "L", pdf="no", published=False, figures=False)
    md = rep.main_markdown
    assert "| RepQ-ViT | 4/4 | **75.00**\\* |" in md and "| Percentile | 4/4 | 71.00 ± 1.41 |" in md
    assert "\n\\* some seeds failed or have no result yet; mean over the seeds that finished." in md
    assert rep.notes[0] == ("3 of the 6 cells of the grid have no finished result: 1 interrupted "
                            "(tiny_vit.qdrop.w4a4.s1); 1 running (tiny_vit.qdrop.w4a4.s0); 1 not started "
                            f"(tiny_vit.repq_vit.w4a4.s1); `mgrq suite status s --out {out} --label L` lists them")
    assert rep.notes[1] == "the tables have no row for qdrop: none of their cells has a result yet"
    # the command, run as printed, reads the same runs folder: --out only where it is not the default one
    monkeypatch.setenv("MGRQ_RUNS", str(out))
    rep = build_report(out, "s", "L", pdf="no", published=False, figures=False)
    assert rep.notes[0].endswith("(tiny_vit.repq_vit.w4a4.s1); `mgrq suite status s --label L` lists them")


def test_notes_md_lists_in_full_what_a_note_names_the_first_three_of(tmp_path):
    """A note names three cells, then how many more; ``notes.md`` lists every one of them, by
    state, so nothing has to be looked up elsewhere."""
    out = tmp_path / "runs"
    root = out / "s" / "L"
    put(out, "s", "L", "tiny_vit", "percentile", 0, 70.0)
    specs = [RunSpec(model="tiny_vit", method="percentile", w_bits=4, a_bits=4, seed=s) for s in range(6)]
    cells = [{"id": sp.run_id, "hash": sp.content_hash, "dir": f"{sp.run_id}-{sp.content_hash}"} for sp in specs]
    records.write_record(root / "suite.json", {"created": "2026-01-01T00:00:00", "models": ["tiny_vit"],
                                               "methods": ["percentile"], "bits": ["W4A4"], "cells": cells})
    rep = build_report(out, "s", "L", pdf="no", published=False, figures=False)
    ids = [c["id"] for c in cells[1:]]
    assert rep.notes[0] == (f"5 of the 6 cells of the grid have no finished result: 5 not started ({', '.join(ids[:3])} "
                            f"and 2 more, listed in notes.md); `mgrq suite status s --out {out} --label L` lists them")
    md = (rep.dest / "notes.md").read_text()
    assert md.endswith("\n## 5 cells not started\n\n" + "".join(f"- {i}\n" for i in ids)), md
    assert "and 2 more, listed below); `mgrq suite status" in md
    assert "listed in notes.md" not in (rep.dest / "main.md").read_text()
