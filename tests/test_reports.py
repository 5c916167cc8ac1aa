"""Reports: records -> DataFrame -> paper-style LaTeX (compiled with pdflatex, numbers read back
with pdftotext) and Markdown tables, figures, published rows, and the label-to-label delta table.

The inputs are run records with known accuracies written in the runner's layout, so every
number in the tables can be checked exactly.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from harness_helpers import require_latex

from mgrq import records
from mgrq.cli import main
from mgrq.errors import ConfigError
from mgrq.spec import RunSpec
from reports.build import ReportError, build_report

MODELS = ["deit_tiny_patch16_224", "tiny_vit"]


def put(out: Path, suite: str, label: str, model: str, method: str, bits: str, seed: int,
        top1: float | None, fp: float = 80.0, variant: str | None = None, qs: float = 2.0,
        eval_limit: int | None = None, finished: str | None = None, warnings: list[str] | None = None,
        config: dict | None = None, image_bits: int = 8, eval_split: str = "heldout", n_eval: int = 50,
        calib: int = 32, threads: int | None = None) -> None:
    from mgrq.config import config_dict
    from mgrq.methods import get_method

    w, a = int(bits[1]), int(bits[3])
    spec = RunSpec(model=model, method=method, w_bits=w, a_bits=a, seed=seed, variant=variant,
                   eval_limit=eval_limit, method_config=tuple((config or {}).items()), image_bits=image_bits,
                   eval_split=eval_split)
    rec = {"schema": 1, "id": spec.run_id, "hash": spec.content_hash, "spec": spec.to_dict(),
           "suite": {"name": suite, "label": label}, "started": records.now(),
           "finished": finished or records.now(),
           "method": {"name": method, "config": config_dict(get_method(method).make_config(config))}}
    if top1 is None:
        rec.update(status="failed", error={"type": "RuntimeError", "message": "boom", "traceback": ""})
    else:
        rec.update(status="done", metrics={"top1": top1, "top5": 99.0, "fp_top1": fp, "fp_top5": 99.5, "n_eval": float(n_eval)},
                   timings={"quantize_s": qs, "total_s": qs + 1}, peak_mem_mb=100.0,
                   calibration={"n": calib, "seed": seed, "ids_hash": "x"}, warnings=warnings or [])
    if threads is not None:  # a cell run on the CPU with that many torch threads
        rec.update(device="cpu", torch_threads=threads)
    records.write_record(out / suite / label / f"{spec.run_id}-{spec.content_hash}" / "record.json", rec)


def make_runs(out: Path, label: str = "A", shift: float = 0.0, created: str = "2026-01-01T00:00:00") -> None:
    records.write_record(out / "rep" / label / "suite.json", {
        "created": created, "models": MODELS, "methods": ["percentile", "repq_vit", "pct-mm"],
        "bits": ["W4A4", "W6A6"], "ablation": ["percentile", "pct-mm"]})
    for model in MODELS:
        put(out, "rep", label, model, "percentile", "W4A4", 0, 70.0 + shift)
        put(out, "rep", label, model, "percentile", "W4A4", 1, 72.0)
        put(out, "rep", label, model, "repq_vit", "W4A4", 0, 75.5, qs=5.0)
        put(out, "rep", label, model, "repq_vit", "W4A4", 1, 75.5, qs=5.0)
        put(out, "rep", label, model, "percentile", "W6A6", 0, 78.25)
        put(out, "rep", label, model, "percentile", "W4A4", 0, 60.0, variant="pct-mm")
        put(out, "rep", label, model, "percentile", "W4A4", 1, 61.0, variant="pct-mm")
    put(out, "rep", label, "tiny_vit", "repq_vit", "W6A6", 0, None)  # failed cell


def test_tables_compile_and_show_the_numbers(tmp_path):
    require_latex()
    out = tmp_path / "runs"
    make_runs(out)
    rep = build_report(out, "rep", "A", pdf="yes", paired="repq_vit")
    d = rep.dest
    main_tex, abl_tex = (d / "main.tex").read_text(), (d / "ablation.tex").read_text()
    # booktabs, models as columns, FP first, best per column bold, mean +- std over seeds
    assert r"\toprule" in main_tex and r"\midrule" in main_tex and r"\bottomrule" in main_tex
    assert "Method & W/A & DeiT-T & tiny ViT" in main_tex
    body = main_tex.split(r"\midrule")
    assert body[1].strip().startswith("Full Prec. & 32/32 & 80.00 & 80.00")
    assert r"\textbf{75.50}{\scriptsize$\pm$0.00}" in main_tex
    assert r"71.00{\scriptsize$\pm$1.41}" in main_tex and r"\textbf{71.00}" not in main_tex
    assert "RepQ-ViT & 6/6 & -- & fail" in main_tex
    # published rows for the ImageNet model only, marked and cited
    assert r"RepQ-ViT$^\dagger$ & 4/4 & 57.43 & --" in main_tex
    assert r"Full Prec.$^\dagger$ & 32/32 & 72.21" in main_tex and "arXiv:2212.08254" in main_tex
    assert r"\textbf{57.43}" not in main_tex  # published rows never compete for bold
    assert "Avg." in abl_tex and r"\textbf{71.00}" in abl_tex and "pct-mm & 4/4 & 60.50" in abl_tex

    # compile the fragments in a minimal document of our own and read the PDF text back
    doc = tmp_path / "doc"
    doc.mkdir()
    for f in ("main.tex", "ablation.tex"):
        (doc / f).write_text((d / f).read_text())
    (doc / "t.tex").write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
                               "\\begin{document}\n\\input{main.tex}\n\\input{ablation.tex}\n\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=doc,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    text = subprocess.run(["pdftotext", "-layout", "t.pdf", "-"], cwd=doc, capture_output=True,
                          text=True, check=True).stdout
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    assert any(ln.startswith("Full Prec. 32/32 80.00 80.00") for ln in lines), text
    assert any(ln.startswith("Percentile 4/4 71.00±1.41 71.00±1.41") for ln in lines), text
    assert any(ln.startswith("RepQ-ViT 4/4 75.50±0.00 75.50±0.00") for ln in lines), text
    assert any(ln.startswith("Percentile 6/6 78.25 78.25") for ln in lines), text
    assert any(ln.startswith("RepQ-ViT† 4/4 57.43") for ln in lines), text
    assert any(ln.startswith("pct-mm 4/4 60.50±0.71 60.50±0.71 60.50") for ln in lines), text
    assert rep.pdf is not None and rep.pdf.stat().st_size > 1000
    # the paired table is in the compiled PDF too: RepQ-ViT minus pct-mm, seeds 0 and 1
    text = subprocess.run(["pdftotext", "-layout", str(rep.pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    lines = [" ".join(ln.split()) for ln in text.splitlines()]
    assert any(ln.startswith("pct-mm 4/4 +15.00 ± 6.35 (2/2) +15.00 ± 6.35 (2/2)") for ln in lines), text
    assert any(ln.startswith("Percentile 4/4 +4.50 ± 12.71 (2/2)") for ln in lines), text


def test_a_page_of_tables_starts_at_its_top(tmp_path):
    """Two tall tables (as the report writes them, [t] floats): the second goes to a page of its
    own at the document's end, which LaTeX centres vertically unless told otherwise."""
    require_latex()
    from reports.build import compile_pdf

    for i in (1, 2):
        rows = "\n".join(f"row {r} & {r}.00 \\\\" for r in range(34))
        (tmp_path / f"t{i}.tex").write_text(f"\\begin{{table}}[t]\n\\centering\n\\begin{{tabular}}{{lr}}\n\\toprule\n"
                                            f"{rows}\n\\bottomrule\n\\end{{tabular}}\n\\caption{{Table {i}}}\n\\end{{table}}\n")
    pdf = compile_pdf(tmp_path, ["t1.tex", "t2.tex"])
    bbox = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    pages = bbox.split("<page ")[1:]
    tops = [float(re.search(r'<word xMin="[\d.]+" yMin="([\d.]+)"', p).group(1)) for p in pages]
    assert len(pages) == 2 and max(tops) < 80, tops  # 1.5 cm margin: 42.5 pt, the first line's ascent below it
    assert sorted(f.name for f in tmp_path.iterdir()) == ["t1.tex", "t2.tex", "tables.pdf", "tables.tex"]  # no .aux/.log
    (tmp_path / "bad.tex").write_text("\\nosuchcommand\n")  # a failure keeps the log its error points to
    with pytest.raises(ReportError, match=r"pdflatex failed on .*bad-doc.tex: ! Undefined control sequence. \(see "
                                          r".*bad-doc.log\)$"):
        compile_pdf(tmp_path, ["bad.tex"], stem="bad-doc")
    assert (tmp_path / "bad-doc.log").is_file()


def test_markdown_csv_and_figures(tmp_path):
    out = tmp_path / "runs"
    make_runs(out)
    rep = build_report(out, "rep", "A", pdf="no", published=False)
    md = (rep.dest / "main.md").read_text().splitlines()
    rows = [ln for ln in md if ln.startswith("| ") and not ln.startswith("| Method")]
    assert rows[0] == "| Full Prec. | 32/32 | 80.00 | 80.00 |"
    assert rows[1] == "| Percentile | 4/4 | 71.00 ± 1.41 | 71.00 ± 1.41 |"
    assert rows[2] == "| RepQ-ViT | 4/4 | **75.50** ± 0.00 | **75.50** ± 0.00 |"
    assert rows[-1] == "| RepQ-ViT | 6/6 | – | fail |"
    assert not any("†" in r for r in rows)
    abl = (rep.dest / "ablation.md").read_text()
    assert "| pct-mm | 4/4 | 60.50 ± 0.71 | 60.50 ± 0.71 | 60.50 |" in abl
    # every cell was evaluated on 50 images: each table that can go into a paper says so
    assert "suite rep (A), evaluated on 50 images." in abl and "evaluated on 50 images" in md[0]
    assert "suite rep (A), evaluated on 50 images." in (rep.dest / "ablation.tex").read_text()
    cost = (rep.dest / "cost.md").read_text()  # time and memory beside accuracy, same rows
    assert "| RepQ-ViT | 4/4 | 5.0 s, 100 MiB | 5.0 s, 100 MiB |" in cost
    assert "| Percentile | 6/6 | 2.0 s, 100 MiB | 2.0 s, 100 MiB |" in cost
    assert r"RepQ-ViT & 4/4 & 5.0 s, 100 MiB" in (rep.dest / "cost.tex").read_text()
    import pandas as pd

    csv = pd.read_csv(rep.dest / "results.csv")
    assert len(csv) == 15 and (csv["status"] == "failed").sum() == 1
    raw = pd.read_csv(rep.dest / "results.csv", dtype=str)  # the text as written: a count, not 50.0
    assert set(raw.loc[raw["status"] == "done", "n_eval"]) == {"50"}
    from matplotlib.image import imread

    names = sorted(p.name for p in rep.figures)
    assert names == sorted(f"{s}.{e}" for s in ("acc_vs_bits", "ablation", "acc_vs_time") for e in ("pdf", "png"))
    for p in rep.figures:
        if p.suffix == ".png":
            h, w = imread(p).shape[:2]
            assert h > 200 and w > 300


def test_paired_differences_intervals_and_verdicts():
    import pandas as pd

    from reports.tables import paired_frame, paired_table

    ref = [80.0, 81.0, 82.0, 83.0]
    others = {
        "ahead": [78.0, 79.5, 80.0, 81.0],   # ref - x = 2, 1.5, 2, 2
        "behind": [81.0, 82.2, 82.8, 84.0],  # -1, -1.2, -0.8, -1
        "tie": [79.0, 82.0, 81.5, 83.5],     # 1, -1, 0.5, -0.5
        "gaps": [80.0, None, 70.0, 90.0],    # seed 1 failed; seed 2 has no reference (below)
    }
    rows = [{"model": "tiny_vit", "name": "ref", "bits": "W4A4", "seed": i, "status": "done", "top1": v,
             "source": "run"} for i, v in enumerate(ref) if i != 2]
    rows.append({"model": "tiny_vit", "name": "ref", "bits": "W4A4", "seed": 2, "status": "failed",
                 "top1": None, "source": "run"})
    for name, vals in others.items():
        for i, v in enumerate(vals):
            rows.append({"model": "tiny_vit", "name": name, "bits": "W4A4", "seed": i,
                         "status": "done" if v is not None else "failed", "top1": v, "source": "run"})
    df = pd.DataFrame(rows)
    pf = paired_frame(df, "ref").set_index("name")
    # the reference failed at seed 2: no method is paired there
    assert pf["n"].to_dict() == {"ahead": 3, "behind": 3, "gaps": 2, "tie": 3}
    t2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom
    a = pf.loc["ahead"]  # differences 2, 1.5, 2 (seeds 0, 1, 3)
    assert a["diff"] == pytest.approx(5.5 / 3) and a["sd"] == pytest.approx(0.288675, rel=1e-5)
    assert a["half"] == pytest.approx(t2 * 0.288675 / 3 ** 0.5, rel=1e-5)
    assert a["verdict"] == "ahead" and a["level"] == 3
    assert pf.loc["behind", "verdict"] == "behind" and pf.loc["behind", "level"] == 0
    t = pf.loc["tie"]  # 1, -1, -0.5: the interval contains 0
    assert t["verdict"] == "tie" and t["level"] == 1 and t["diff"] == pytest.approx(-0.5 / 3)
    g = pf.loc["gaps"]  # seeds 0 and 3 only: 0 and -7
    assert g["diff"] == pytest.approx(-3.5) and g["level"] == 1 and g["verdict"] == "tie"
    nan = pd.concat([df, pd.DataFrame([{"model": "tiny_vit", "name": "ahead", "bits": "W4A4", "seed": 9,
                                         "status": "done", "top1": None, "source": "run"},
                                        {"model": "tiny_vit", "name": "ref", "bits": "W4A4", "seed": 9,
                                         "status": "done", "top1": 85.0, "source": "run"}])])
    assert paired_frame(nan, "ref").set_index("name").loc["ahead", "n"] == 3  # a NaN top-1 is not paired
    one = paired_frame(df[df["seed"] == 0], "ref").set_index("name")
    assert set(one["verdict"]) == {"n<2"} and one["half"].isna().all()
    md = paired_table(df, "ref", ["tiny_vit"], ["ref", "ahead", "behind", "tie", "gaps"], "s", "L").markdown()
    assert "| ahead | 4/4 | **+1.83 ± 0.72 (3/3)** |" in md
    assert "| behind | 4/4 | *−1.07 ± 0.29 (0/3)* |" in md
    assert "| tie | 4/4 | −0.17 ± 2.59 (1/3) |" in md
    assert "| ref |" not in md
    assert "over one seed" not in md and "evaluated on" not in md
    md1 = paired_table(df[df["seed"] == 0], "ref", ["tiny_vit"], ["ref", "ahead"], "s", "L", n_eval=200.0).markdown()
    assert "| ahead | 4/4 | +2.00 (1/1) |" in md1  # one seed: no interval, and the caption says why
    assert "An entry over one seed has no interval." in md1 and "suite s (L), evaluated on 200 images:" in md1


def test_a_paired_interval_prints_with_the_decimals_that_show_its_verdict():
    """An interval above 0 by less than the rounding (docs/results/brecq-swin-diag: 0.2233 ±
    0.218) printed as +0.22 ± 0.22 in bold, which reads as touching 0; it takes a decimal more."""
    from reports.tables import _paired_text

    assert _paired_text(0.2233, 0.218, "ahead") == "+0.223 ± 0.218"
    assert _paired_text(-0.2233, 0.218, "behind") == "-0.223 ± 0.218"
    assert _paired_text(0.2, 0.2, "tie") == "+0.20 ± 0.20"  # touching 0: inside the interval
    assert _paired_text(1.8333, 0.7171, "ahead") == "+1.83 ± 0.72"  # clear cases keep two decimals
    assert _paired_text(0.0002, 0.00015, "ahead") == "+0.0002 ± 0.0001"  # at most four
    assert _paired_text(-0.003, float("nan"), "n<2") == "+0.00"


def test_paired_option_of_the_cli(tmp_path, capsys):
    out = tmp_path / "runs"
    make_runs(out)
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures", "--paired", "repq_vit"]) == 0
    text = capsys.readouterr().out
    assert "| pct-mm | 4/4 | **+15.00 ± 6.35 (2/2)** | **+15.00 ± 6.35 (2/2)** |" in text
    assert "| Percentile | 6/6 |" not in text.split("Paired by seed")[1]  # no reference at W6A6
    assert (out / "rep" / "A" / "report" / "paired.tex").is_file()
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures", "--paired", "mgrq"]) == 2
    err = capsys.readouterr().err
    assert "--paired mgrq: not a method of suite rep [A]; expected one of percentile, repq_vit, pct-mm" in err
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures", "--paired", "pct-m"]) == 2
    assert ("--paired pct-m: not a method of suite rep [A] (did you mean 'pct-mm'?); expected one of percentile, "
            "repq_vit, pct-mm") in capsys.readouterr().err
    # in the label's grid, but none of its cells finished (a run with --only, or all failed)
    meta = json.loads((out / "rep" / "A" / "suite.json").read_text())
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "methods": meta["methods"] + ["mgrq"]})
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures", "--paired", "mgrq"]) == 2
    assert ("--paired mgrq: a method of suite rep with no finished cell in label A; expected one of percentile, "
            "repq_vit, pct-mm (or none)") in capsys.readouterr().err


def test_compare_flags_a_cell_with_new_warnings_even_when_its_top1_stayed(tmp_path, capsys):
    """A reconstruction whose output error rose is a warning in its record, not a failure; a night
    where such warnings appear on a cell whose top-1 stayed within the threshold is flagged (and
    alerts under --strict); fewer warnings than before are not."""
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", created="2026-01-02T00:00:00")  # the same top-1 everywhere
    rose = "qdrop: unit blocks.0 (joint stage): its output error on the calibration images rose 3.1x"
    put(out, "rep", "A", "tiny_vit", "repq_vit", "W4A4", 1, 75.5, qs=5.0, warnings=[rose])  # fewer in B
    put(out, "rep", "B", "tiny_vit", "percentile", "W4A4", 1, 72.3, warnings=[rose])  # +0.3: below 1.0
    argv = ["report", "rep", "--out", str(out), "--compare", "A", "B", "--threshold", "1.0"]
    assert main([*argv, "--strict"]) == 1
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and "Model" not in ln]
    assert rows[0] == "| tiny ViT | Percentile | 4/4 | 1 | 72.00 | 72.30 | +0.30 | **new warning (0 → 1)** |"
    tex_rows = (out / "rep" / "B" / "report" / "compare-A-vs-B.tex").read_text()
    assert r"\textbf{new warning (0 $\to$ 1)}" in tex_rows
    assert [r for r in rows if "warning" in r] == rows[:1]  # tiny ViT RepQ-ViT seed 1 lost its warning: no flag
    csv = pd.read_csv(out / "rep" / "B" / "report" / "compare-A-vs-B.csv")
    row = csv[(csv["flag"] == "new warning")].iloc[0]
    assert (row["warnings_a"], row["warnings_b"]) == (0, 1)
    put(out, "rep", "B", "tiny_vit", "percentile", "W4A4", 1, 72.0)  # the warning gone again
    assert main([*argv, "--strict"]) == 0
    assert "**new warning" not in capsys.readouterr().out
    (tmp_path / "flag.tex").write_text(tex_rows)
    require_latex()  # the flag's counts as LaTeX compile
    from reports.build import compile_pdf
    assert compile_pdf(tmp_path, ["flag.tex"], stem="cmp").is_file()


def test_new_warnings_are_flagged_only_where_both_sides_counted_them():
    from reports.tables import compare_frame

    key = {"model": "m", "name": "x", "bits": "W4A4", "seed": 0, "status": "done", "top1": 50.0}
    a, b = pd.DataFrame([{**key, "warnings": 0}]), pd.DataFrame([{**key, "warnings": 2}])
    assert list(compare_frame(a, b, 1.0)["flag"]) == ["new warning"]
    assert list(compare_frame(b, a, 1.0)["flag"]) == [""]  # fewer: no flag
    unknown = a.assign(warnings=float("nan"))  # a CSV row without the count
    assert list(compare_frame(unknown, b, 1.0)["flag"]) == [""]
    assert list(compare_frame(a.drop(columns="warnings"), b, 1.0)["flag"]) == [""]


def test_compare_labels_flags_moves_and_new_failures(tmp_path, capsys):
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", shift=-2.5, created="2026-01-02T00:00:00")  # seed-0 percentile cells drop 2.5
    put(out, "rep", "B", "deit_tiny_patch16_224", "repq_vit", "W4A4", 1, None)  # newly failed
    put(out, "rep", "B", "tiny_vit", "repq_vit", "W4A4", 1, 75.9)  # moved 0.4: not flagged
    code = main(["report", "rep", "--out", str(out), "--compare", "previous", "latest",
                 "--threshold", "1.0", "--strict"])
    text = capsys.readouterr().out
    assert code == 1  # --strict: flagged cells make the exit status non-zero
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and "Model" not in ln]
    assert rows[0] == "| DeiT-T | RepQ-ViT | 4/4 | 1 | 75.50 | fail | – | **newly failed** |"
    moved = [r for r in rows if "**moved**" in r]
    assert len(moved) == 2 and all("| 70.00 | 67.50 | −2.50 |" in r for r in moved)
    assert "| tiny ViT | RepQ-ViT | 4/4 | 1 | 75.50 | 75.90 | +0.40 |  |" in rows
    assert "| tiny ViT | RepQ-ViT | 6/6 | 0 | fail | fail | – | still failing |" in rows
    from reports.frame import records_frame
    from reports.tables import compare_frame

    df = records_frame(out, "rep", ["A", "B"])
    cmp = compare_frame(df[df["label"] == "A"], df[df["label"] == "B"], 1.0, bits=["W6A6", "W4A4"])
    pct = cmp[(cmp["flag"] == "") & (cmp["name"] == "percentile") & (cmp["model"] == "tiny_vit")]
    assert list(pct["bits"]) == ["W6A6", "W4A4"]  # the suite's order of bit-widths, not the alphabet's
    plain = [r.split(" | ")[:2] for r in rows if r.endswith("|  |")]  # unflagged: in the suite's order
    assert plain == [["| DeiT-T", m] for m in ("Percentile", "Percentile", "RepQ-ViT", "pct-mm", "pct-mm")] + [
        ["| tiny ViT", m] for m in ("Percentile", "Percentile", "RepQ-ViT", "RepQ-ViT", "pct-mm", "pct-mm")], plain
    assert (out / "rep" / "B" / "report" / "compare-A-vs-B.tex").is_file()
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B"]) == 0  # not strict
    capsys.readouterr()
    # a night aborted before any cell finished (its jobs cancelled: records left running, one
    # interrupted): as `latest` it is an error (so --strict alerts), and the next night's
    # `previous` skips it
    (out / "rep" / "C").mkdir()
    records.write_record(out / "rep" / "C" / "suite.json", {"suite": "rep", "label": "C",
                                                           "created": "2026-01-03T00:00:00"})
    b_cells = sorted((out / "rep" / "B").glob("*/record.json"))
    for src, status, error in ((b_cells[0], "running", None), (b_cells[1], "failed", {"type": "Interrupted",
                                                                                      "message": "stopped"})):
        rec = json.loads(src.read_text())
        records.write_record(out / "rep" / "C" / src.parent.name / "record.json",
                             {**rec, "status": status, "error": error, "metrics": None})
    compare = ["report", "rep", "--out", str(out), "--compare", "previous", "latest", "--threshold", "1.0"]
    assert main([*compare, "--strict"]) == 2
    assert "label C of suite rep has no cell records" in capsys.readouterr().err
    make_runs(out, "D", created="2026-01-04T00:00:00")
    assert main(compare) == 0
    assert (out / "rep" / "D" / "report" / "compare-B-vs-D.md").is_file()  # B and D, not C
    assert ("note: previous = B: label(s) C between it and D hold no finished cell (none, or only running or "
            "interrupted ones) and are skipped" in capsys.readouterr().err)


def test_compare_a_run_with_a_results_csv_as_with_its_label(tmp_path, capsys, monkeypatch):
    """`--compare FILE.csv LABEL`: a report's results.csv (a shipped one, another machine's) is the A
    side, cell by cell, with the same rows and flags as the label it came from; the CSV keeps no
    settings, so the note says how many cells ran the same spec (hash) instead."""
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", shift=-2.5, created="2026-01-02T00:00:00")
    put(out, "rep", "B", "tiny_vit", "repq_vit", "W4A4", 1, 75.9)
    build_report(out, "rep", "A", pdf="no", figures=False, dest=tmp_path / "shipped")
    csv = tmp_path / "shipped" / "results.csv"
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--threshold", "0"]) == 0
    by_label = capsys.readouterr().out
    assert main(["report", "rep", "--out", str(out), "--compare", str(csv), "B", "--threshold", "0", "--strict"]) == 1
    by_csv = capsys.readouterr().out
    rows = [ln for ln in by_label.splitlines() if ln.startswith("| ")]
    assert rows and rows == [ln for ln in by_csv.splitlines() if ln.startswith("| ")]
    assert sum("**moved**" in r for r in rows) == 3  # the two shifted cells and the 0.4 move (threshold 0)
    assert "from csv-A (A) to B (B)" in by_csv and (out / "rep" / "B" / "report" / "compare-csv-A-vs-B.md").is_file()
    said = f"A is {csv}: a results.csv keeps no settings, so none are compared; 15 of 15 cells in both have the same hash"
    assert f"note: {said} (the same spec)" in by_csv
    assert f"\n{said} (the same spec).\n" in (out / "rep" / "B" / "report" / "compare-csv-A-vs-B.md").read_text()
    monkeypatch.setenv("HOME", str(tmp_path))  # a quoted ~ reaches us unexpanded
    assert main(["report", "rep", "--out", str(out), "--compare", "~/shipped/results.csv", "B", "--threshold", "0"]) == 0
    by_tilde = capsys.readouterr().out
    assert [ln for ln in by_tilde.splitlines() if ln.startswith("| ")] == rows
    assert f"note: {said} (the same spec)" in by_tilde
    # another spec in the CSV: its hash names it
    df = pd.read_csv(csv)
    df.loc[(df["model"] == "tiny_vit") & (df["seed"] == 1) & (df["name"] == "percentile"), "hash"] = "0" * 12
    df.to_csv(other := tmp_path / "other.csv", index=False)
    assert main(["report", "rep", "--out", str(out), "--compare", str(other), "B"]) == 0
    assert "14 of 15 cells in both have the same hash (the same spec); another hash: tiny_vit.percentile.w4a4.s1" in \
        capsys.readouterr().out
    df.drop(columns=["warnings"]).to_csv(nowarn := tmp_path / "nowarn.csv", index=False)  # an older CSV
    assert main(["report", "rep", "--out", str(out), "--compare", str(nowarn), "B"]) == 0
    assert "it has no warnings column, so no cell is flagged for new warnings" in capsys.readouterr().out
    # bad input: one line naming the file and what was expected
    df.drop(columns=["hash"]).to_csv(nohash := tmp_path / "nohash.csv", index=False)
    pd.concat([df, df.assign(label="Z")]).to_csv(two := tmp_path / "two.csv", index=False)
    pd.concat([df, df]).to_csv(twice := tmp_path / "twice.csv", index=False)  # two files joined
    n = len(df)
    malformed = []
    for i, (col, value) in enumerate((("top1", "abc"), ("top1", "inf"), ("seed", "a"), ("seed", "1.5"), ("seed", "inf"),
                                      ("seed", ""), ("bits", "4/4"), ("status", "ok"), ("status", ""),
                                      ("warnings", "x"), ("warnings", "-1"), ("warnings", "0.5"), ("warnings", "-inf"))):
        (path := tmp_path / f"bad{i}.csv").write_text(df.astype({col: object}).assign(**{col: [
            value if j == 2 else v for j, v in enumerate(df[col])]}).to_csv(index=False))
        shown = repr(value) if value else "blank"
        malformed.append(([str(path), "B"], f"bad{i}.csv: line 4, column {col} is {shown}; expected "))
    first = df.iloc[0]
    for argv, says in (([str(tmp_path / "none.csv"), "B"], "none.csv: no such file; expected a report's results.csv"),
                       ([str(nohash), "B"], "nohash.csv: no column hash; expected a report's results.csv"),
                       ([str(two), "B"], "two.csv: cells of labels A, Z of suite rep; expected the cells of one label"),
                       ([str(twice), "B"], f"twice.csv: cell {first['model']}.{first['name']}.w4a4.s{first['seed']} is "
                                           f"on lines 2, {n + 2} (two files joined?); expected one row per cell"),
                       *malformed,
                       (["A", str(csv)], "LABEL_B is a file; expected a label of suite rep's runs")):
        assert main(["report", "rep", "--out", str(out), "--compare", *argv]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, (argv, err)


def test_compare_from_mlflow_takes_the_run_folders_order_and_refuses_an_unmirrored_newest(tmp_path, capsys):
    """MLflow orders a suite's labels by when each was made (its suite.json), as the run folders
    do, so a label resumed after newer ones keeps its place; `latest`/`previous` from MLflow refuse
    a newest label under --out that MLflow has no run of, instead of comparing an older pair."""
    from mgrq.tracking import default_uri, labels, mirror

    out = tmp_path / "runs"
    make_runs(out, "Z-old", created="2025-12-31T00:00:00+00:00")
    make_runs(out, "A", created="2026-01-01T00:00:00+00:00")
    make_runs(out, "B", shift=-2.5, created="2026-01-02T00:00:00+00:00")
    for p in (out / "rep" / "Z-old").glob("*/record.json"):  # its cells finished last (resumed after B)
        records.write_record(p, {**json.loads(p.read_text()), "started": "2030-01-05T00:00:00+00:00"})
    mirror(out, "rep")
    assert labels(default_uri(out), "rep") == ["Z-old", "A", "B"]
    compare = ["report", "rep", "--out", str(out), "--from", "mlflow", "--compare", "previous", "latest",
               "--threshold", "1.0"]
    assert main(compare) == 0
    assert (out / "rep" / "B" / "report" / "compare-A-vs-B.md").is_file()
    capsys.readouterr()
    records.write_record(out / "rep" / "C" / "suite.json", {"created": "2026-01-03T00:00:00+00:00"})
    assert main([*compare, "--strict"]) == 2  # a night that finished nothing
    err = capsys.readouterr().err
    assert "latest: label C, the newest run of suite rep under" in err and "has no run in MLflow" in err, err
    assert "whose newest is B: no cell of it finished or failed, or it was not mirrored (`mgrq mirror" in err
    idfile = out / ".mgrq-id"  # a store these run folders were not mirrored into (a team server): no check
    real = idfile.read_text()
    idfile.write_text("another-machine:/runs:1234\n")
    assert main([*compare, "--strict"]) == 1  # A vs B, B's moved cells flagged
    assert "has no run in MLflow" not in capsys.readouterr().err
    idfile.write_text(real)
    # a cancelled night (every cell interrupted: KILLED runs in MLflow) is skipped by previous, as
    # from the run folders
    import shutil

    shutil.rmtree(out / "rep" / "C")
    make_runs(out, "D", created="2026-01-04T00:00:00+00:00")
    for p in (out / "rep" / "D").glob("*/record.json"):
        records.write_record(p, {**json.loads(p.read_text()), "status": "failed", "metrics": None,
                                 "error": {"type": "Interrupted", "message": "cancelled", "traceback": ""}})
    make_runs(out, "E", created="2026-01-05T00:00:00+00:00")
    mirror(out, "rep")
    assert main(compare) == 0
    assert (out / "rep" / "E" / "report" / "compare-B-vs-E.md").is_file()
    assert "note: previous = B: label(s) D between it and E hold no finished cell" in capsys.readouterr().err


def test_a_move_of_exactly_the_threshold_is_not_flagged_whatever_the_floats_last_bit():
    import pandas as pd

    from reports.tables import compare_frame

    def frame(*top1):
        return pd.DataFrame([{"model": "m", "name": "x", "bits": "W4A4", "seed": i, "status": "done", "top1": t}
                             for i, t in enumerate(top1)])

    # 250 of 50,000 images either way: 31752 -> 32002 gives 0.5000000000000071 unrounded
    a, b = frame(100 * 31752 / 50000, 100 * 40000 / 50000), frame(100 * 32002 / 50000, 100 * 40250 / 50000)
    cmp = compare_frame(a, b, 0.5)
    assert list(cmp["delta"]) == [0.5, 0.5] and list(cmp["flag"]) == ["", ""]
    assert list(compare_frame(a, b, 0.49)["flag"]) == ["moved", "moved"]


def test_the_notes_say_which_weights_ran_beside_published_rows_and_when_a_model_had_two(tmp_path):
    """Each record keeps its FP weights: a model whose cells ran with two files is noted, and so
    is a model beside published rows that ran with a checkpoint, not timm's pinned weights (the
    published rows were measured with those). No note for timm weights or records without."""
    out = tmp_path / "runs"
    make_runs(out)
    cells = sorted((out / "rep" / "A").glob("deit_tiny_patch16_224.*/record.json"))
    for i, p in enumerate(cells):
        sha = ("ab" if i else "cd") * 32
        records.write_record(p, {**json.loads(p.read_text()), "weights": {"file": "/ck/deit_t.pth", "sha256": sha}})
    notes = build_report(out, "rep", "A", pdf="no", figures=False).notes
    assert any(n.startswith("model deit_tiny_patch16_224's finished cells ran with different weights: "
                            f"deit_t.pth (sha256 {'ab' * 6}) ({len(cells) - 1} cells), deit_t.pth (sha256 {'cd' * 6}) (1 cell)") for n in notes), notes
    pub = [n for n in notes if n.startswith("the published rows (marked) were measured with timm's")]
    assert pub and "here deit_tiny_patch16_224 ran with deit_t.pth (sha256 " in pub[0]
    assert not any("tiny_vit" in n for n in pub)  # no published rows for it
    assert not any("published rows" in n for n in build_report(out, "rep", "A", pdf="no", figures=False,
                                                               published=False).notes)
    for p in cells:
        records.write_record(p, {**json.loads(p.read_text()), "weights": {
            "file": "/hub/model.safetensors", "sha256": "ef" * 32, "timm": "deit_tiny_patch16_224.fb_in1k"}})
    notes = build_report(out, "rep", "A", pdf="no", figures=False).notes
    assert not any("weights" in n for n in notes), notes


def test_a_suites_report_names_rename_rows_in_tables_figures_and_prints(tmp_path, capsys):
    """report.names (a suite file's, kept in the label's suite.json) gives a row the name a paper
    prints, e.g. a method of one's own or a variant; other rows keep theirs; the names end with
    the report (a later report without them prints the defaults)."""
    from reports.tables import method_name

    out = tmp_path / "runs"
    make_runs(out)
    meta = json.loads((out / "rep" / "A" / "suite.json").read_text())
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "names": {"pct-mm": "Percentile (min/max)",
                                                                            "repq_vit": "RepQ-ViT [7]"}})
    assert main(["report", "rep", "--out", str(out), "--no-pdf"]) == 0
    printed = capsys.readouterr().out
    md = (out / "rep" / "A" / "report" / "main.md").read_text()
    for text in (printed, md):
        assert "| Percentile (min/max) | 4/4 |" in text and "| RepQ-ViT [7] | 4/4 |" in text and "| Percentile |" in text
    assert r"RepQ-ViT [7] & 4/4" in (out / "rep" / "A" / "report" / "main.tex").read_text()
    assert "| RepQ-ViT † |" in md and "RepQ-ViT [7] †" not in md  # the paper's rows keep the paper's name
    assert method_name("pct-mm") == "pct-mm" and method_name("repq_vit") == "RepQ-ViT"  # scoped to the report
    # a label that recorded no names takes the suite file's (set after the runs); malformed ones are ignored
    suite_file = tmp_path / "rep.yaml"
    suite_file.write_text("name: rep\ndescription: d\ncommand: c\nmodels: [tiny_vit]\nbits: [W4A4]\n"
                          "methods: [percentile, {name: percentile, variant: pct-mm}]\n"
                          "report: {names: {pct-mm: 'Percentile (min/max, from the file)'}}\n")
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "names": {}, "file": str(suite_file)})
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures"]) == 0
    assert "| Percentile (min/max, from the file) | 4/4 |" in capsys.readouterr().out
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "names": ["not", "a", "mapping"]})
    assert main(["report", "rep", "--out", str(out), "--no-pdf", "--no-figures"]) == 0
    assert "| pct-mm | 4/4 |" in capsys.readouterr().out


def test_report_names_in_a_suite_file_are_checked(tmp_path):
    from harness_helpers import write_suite

    from mgrq.runner.suite import load_suite

    ok = write_suite(tmp_path / "ok.yaml", methods=["percentile", {"name": "percentile", "variant": "pmm"}],
                     report={"names": {"pmm": " Percentile (min/max) "}})
    assert load_suite(ok).row_names == (("pmm", "Percentile (min/max)"),)
    bad = write_suite(tmp_path / "bad.yaml", report={"names": {"qdrop": "QDrop", "percentile": ""}})
    with pytest.raises(ConfigError) as e:
        load_suite(bad)
    assert "report.names.qdrop" in str(e.value) and "report.names.percentile': expected a non-empty one-line string" in str(e.value)
    with pytest.raises(ConfigError, match="report.names': expected a mapping"):
        load_suite(write_suite(tmp_path / "bad2.yaml", report={"names": ["x"]}))
    with pytest.raises(ConfigError, match=r"rows percentile and pmm would both print as 'Percentile'"):
        load_suite(write_suite(tmp_path / "dup.yaml", methods=["percentile", {"name": "percentile", "variant": "pmm"}],
                               report={"names": {"pmm": "Percentile"}}))
    with pytest.raises(ConfigError, match=r"report.names.percentile': expected a non-empty one-line string without '\|'"):
        load_suite(write_suite(tmp_path / "bar.yaml", report={"names": {"percentile": "Pct | x"}}))


def test_a_method_not_registered_here_is_named_not_listed_as_all_changed(tmp_path):
    """A report made without a method of one's own loaded ($MGRQ_METHODS unset) cannot know its
    config defaults: its setup row says so and a note says why, instead of listing every field
    as changed."""
    out = tmp_path / "runs"
    make_runs(out)
    src = next((out / "rep" / "A").glob("tiny_vit.percentile.w4a4.s0-*/record.json"))
    rec = json.loads(src.read_text())
    rec["spec"] = {**rec["spec"], "method": "my_pct", "variant": None}
    rec["method"] = {**rec["method"], "name": "my_pct", "config": {"per_channel": True, "alpha": 0.5}}
    rec["id"] = "tiny_vit.my_pct.w4a4.s0"
    records.write_record(out / "rep" / "A" / "tiny_vit.my_pct.w4a4.s0-x" / "record.json", rec)
    meta = json.loads((out / "rep" / "A" / "suite.json").read_text())
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "methods": meta["methods"] + ["my_pct"]})
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    setup = (rep.dest / "setup.md").read_text()
    row = next(ln for ln in setup.splitlines() if ln.startswith("| my_pct"))
    assert "config unknown here (my_pct is not registered" in row and "alpha" not in row, row
    assert any(n.startswith("method(s) my_pct are not registered in this process") for n in rep.notes), rep.notes


def test_strict_compare_alerts_on_a_new_cell_that_failed(tmp_path, capsys):
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", created="2026-01-02T00:00:00")
    args = ["report", "rep", "--out", str(out), "--compare", "A", "B", "--strict"]
    assert main(args) == 0  # the same cells, the same top-1: nothing flagged
    put(out, "rep", "B", "tiny_vit", "repq_vit", "W4A4", 7, None)  # a seed A never ran, failed in B
    assert main(args) == 1
    assert "| tiny ViT | RepQ-ViT | 4/4 | 7 | – | fail | – | **new, failed** |" in capsys.readouterr().out
    # the commits each side ran from, under the table and in the CSV (a delta traced to a commit range)
    for lab, sha in (("A", "a" * 40), ("B", "b" * 40 + "+dirty.0123abcd")):
        for p in (out / "rep" / lab).glob("*/record.json"):
            records.write_record(p, {**json.loads(p.read_text()), "git_sha": sha})
    assert main(args) == 1
    assert f"A ran at {'a' * 12}; B ran at {'b' * 12}+dirty.0123abcd." in capsys.readouterr().out
    p = next((out / "rep" / "B").glob("*/record.json"))
    rec_b = json.loads(p.read_text())
    rec_b.pop("git_sha")
    records.write_record(p, rec_b)
    assert main(args) == 1  # a cell without a recorded sha is counted, not left out
    assert re.search(rf"B at {'b' * 12}\+dirty\.0123abcd \(\d+ cells\), unknown \(1 cell\)\.", capsys.readouterr().out)
    csv = pd.read_csv(out / "rep" / "B" / "report" / "compare-A-vs-B.csv")
    assert {"git_sha_a", "git_sha_b"} <= set(csv.columns) and set(csv["git_sha_a"].dropna()) == {"a" * 40}
    assert f"A ran at {'a' * 12}; B at {'b' * 12}" in (out / "rep" / "B" / "report" / "compare-A-vs-B.tex").read_text()


def test_strict_compare_alerts_on_cells_the_new_run_lost(tmp_path, capsys):
    """A nightly run that stopped early: cells of A without a record in B are flagged; a label
    with no record at all is an error, not a table of 'missing' rows."""
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", created="2026-01-02T00:00:00")
    next((out / "rep" / "B").glob("tiny_vit.repq_vit.w4a4.s1-*/record.json")).unlink()
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--strict"]) == 1
    assert "| tiny ViT | RepQ-ViT | 4/4 | 1 | 75.50 | – | – | **missing** |" in capsys.readouterr().out
    # a cell of B stopped (cancelled): flagged as such, not as a cell B has no record of
    stopped = next((out / "rep" / "B").glob("tiny_vit.percentile.w6a6.s0-*/record.json"))
    records.write_record(stopped, {**json.loads(stopped.read_text()), "status": "failed", "metrics": None,
                                   "error": {"type": "Interrupted", "message": "stopped", "traceback": ""}})
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--strict"]) == 1
    assert "| tiny ViT | Percentile | 6/6 | 0 | 78.25 | – | – | **interrupted** |" in capsys.readouterr().out
    records.write_record(out / "rep" / "C" / "suite.json", {"created": "2026-01-03T00:00:00"})
    assert main(["report", "rep", "--out", str(out), "--compare", "B", "C", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--compare: label C of suite rep has no cell records (no cell finished or failed)" in err


def test_report_bad_inputs(tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ReportError, match=r"no finished cells to report \(source: records\)$"):
        records.write_record(out / "empty" / "L" / "suite.json", {"created": "x"})
        build_report(out, "empty", "L", pdf="no")
    (out / "empty" / "L" / "c-0").mkdir()
    (out / "empty" / "L" / "c-0" / "record.json").write_text("{bad")  # the only record: unreadable
    with pytest.raises(ReportError, match=r"no finished cells to report \(source: records\): its 1 record "
                                          r"file\(s\) are unreadable or malformed \(L/c-0 \(unreadable"):
        build_report(out, "empty", "L", pdf="no")
    from mgrq.errors import ConfigError, UnknownNameError

    with pytest.raises(ConfigError, match="expected at least 1"):
        build_report(out, "nosuch", None, pdf="no")
    # the newest label has no finished cell (a run stopped at once): the error names the one that has
    full = tmp_path / "full"
    make_runs(full, "A", created="2026-01-01T00:00:00")
    records.write_record(full / "rep" / "B" / "suite.json", {"created": "2026-01-02T00:00:00"})
    with pytest.raises(ReportError, match=r"rep \[B\]: no finished cells to report \(source: records\); the newest "
                                          rf"label with finished cells is A \(`mgrq report rep --out "
                                          rf"{re.escape(str(full))} --label A`\)$"):
        build_report(full, "rep", None, pdf="no")
    with pytest.raises(ReportError, match=r"\(source: records\)$"):  # a label named: no other one suggested
        build_report(full, "rep", "B", pdf="no")
    make_runs(out)
    with pytest.raises(UnknownNameError, match=r"unknown label 'Z' of suite rep\. .*Known labels: A"):
        build_report(out, "rep", "Z", pdf="no")
    with pytest.raises(ConfigError, match=r"expected at least 1 .*suites with runs under .*: empty, rep\)"):
        build_report(out, "nosuch", None, pdf="no")
    # an explicit --paired that is not a method of the label fails before anything is written
    with pytest.raises(ConfigError, match="--paired mgrq: not a method of suite rep"):
        build_report(out, "rep", "A", pdf="no", paired="mgrq", dest=tmp_path / "r1")
    assert not (tmp_path / "r1" / "main.md").exists()


def test_rerun_cell_under_another_hash_counts_once(tmp_path):
    out = tmp_path / "runs"
    make_runs(out)
    # the seed-1 percentile cell of tiny_vit rerun in the same label with other options (new hash)
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 1, 90.0, eval_limit=20, finished="2999-01-01T00:00:00")
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    cells = rep.frame[(rep.frame["model"] == "tiny_vit") & (rep.frame["name"] == "percentile")
                      & (rep.frame["bits"] == "W4A4")]
    assert sorted(cells["top1"]) == [70.0, 90.0]  # seed 0, and the newer seed-1 record only
    assert "| Percentile | 4/4 | 71.00 ± 1.41 | **80.00** ± 14.14 |" in rep.main_markdown
    assert len(rep.notes) == 2 and "1 record(s) left out" in rep.notes[0] and "tiny_vit.percentile.w4a4.s1" in rep.notes[0]
    # the kept record was evaluated on 20 images, the others on all: the table mixes them, and says so
    assert "ran with different settings" in rep.notes[1]
    assert "all rows: eval_limit = None (13 cells), 20 (1 cell)" in rep.notes[1]


def test_report_notes_a_row_whose_cells_ran_with_other_method_settings(tmp_path):
    """A cell rerun from an edited suite file (another method config) in the same label: the row
    averages two configs, and the note names the row, the field and the cell counts."""
    out = tmp_path / "runs"
    make_runs(out)
    assert build_report(out, "rep", "A", pdf="no", figures=False).notes == []
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 1, 71.0, config={"weight_init": "lp"},
        finished="2999-01-01T00:00:00")
    notes = build_report(out, "rep", "A", pdf="no", figures=False).notes
    assert notes[1].split(": ", 1)[1].startswith("row percentile: config.weight_init = percentile (5 cells), lp (1 cell);")
    assert "pct-mm" not in notes[1] and "all rows" not in notes[1]


def test_settings_that_may_differ_raise_no_note(tmp_path):
    """No note where settings differ by design or cannot be compared: a variant with its own
    image bits (a suite sets them per method entry), a config field that older records lack
    (added to the method since), a record whose method part is malformed (still reported)."""
    import shutil

    out = tmp_path / "runs"
    make_runs(out)
    for d in (out / "rep" / "A").glob("*.pct-mm.*"):
        shutil.rmtree(d)
    for model in MODELS:  # every cell of the variant at 6-bit images: uniform within its row
        for seed in (0, 1):
            put(out, "rep", "A", model, "percentile", "W4A4", seed, 60.0 + seed, variant="pct-mm", image_bits=6)
    recs = sorted((out / "rep" / "A").glob("tiny_vit.repq_vit.w4a4.*/record.json"))
    old = json.loads(recs[0].read_text())
    old["method"]["config"].popitem()  # a record from before the method had its last field
    recs[0].write_text(json.dumps(old))
    rec = json.loads(recs[1].read_text())
    recs[1].write_text(json.dumps({**rec, "method": "repq_vit"}))  # malformed method part
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert rep.notes == [] and len(rep.frame) == 15 and "settings" not in rep.frame.attrs
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 0, 60.5, variant="pct-mm", image_bits=8,
        finished="2999-01-01T00:00:00")
    (note,) = [n for n in build_report(out, "rep", "A", pdf="no", figures=False).notes if "settings" in n]
    assert "row pct-mm: image_bits = 6 (3 cells), 8 (1 cell)" in note and "all rows" not in note


def test_paired_setting_of_the_suite_file(tmp_path, capsys):
    from mgrq.errors import ConfigError

    out = tmp_path / "runs"
    make_runs(out)
    meta = records.read_record(out / "rep" / "A" / "suite.json")
    suite_file = tmp_path / "rep.yaml"  # the label predates report.paired: the recorded file has it
    suite_file.write_text("name: rep\ndescription: d\ncommand: c\nmodels: [tiny_vit]\nbits: [W4A4]\n"
                          "methods: [percentile, repq_vit]\nreport: {paired: repq_vit}\n")
    records.write_record(out / "rep" / "A" / "suite.json", {**meta, "file": str(suite_file)})
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert "| Percentile | 4/4 | +4.50 ± 12.71 (2/2) |" in rep.paired_markdown
    assert not build_report(out, "rep", "A", pdf="no", figures=False, paired="none").paired_markdown
    # the suite names a method this label never ran: the rest of the report is still written
    suite_file.write_text(suite_file.read_text().replace("percentile, repq_vit", "percentile, repq_vit, qdrop")
                          .replace("paired: repq_vit", "paired: qdrop"))
    rep = build_report(out, "rep", "A", pdf="no", figures=False, dest=tmp_path / "r2")
    assert not rep.paired_markdown and (tmp_path / "r2" / "cost.md").is_file()
    assert rep.notes == ["paired table skipped: the suite's report.paired qdrop has no cells in this label"]
    suite_file.write_bytes(b"\xff\xfe\x00garbage")  # unreadable: no settings, still a report
    assert build_report(out, "rep", "A", pdf="no", figures=False).main_markdown
    with pytest.raises(ConfigError, match="--paired qdrop: not a method of suite rep"):
        build_report(out, "rep", "A", pdf="no", figures=False, paired="qdrop")


def test_cost_table_marks_the_device_when_cells_ran_on_different_ones():
    import pandas as pd

    from reports.frame import COLUMNS, aggregate
    from reports.tables import cost_table

    def row(name, device, secs):
        r = dict.fromkeys(COLUMNS)
        r.update(model="tiny_vit", method=name, name=name, bits="W4A4", w_bits=4, a_bits=4, seed=0,
                 status="done", top1=90.0, fp_top1=95.0, quantize_s=secs, peak_mem_mb=100.0,
                 device=device, source="run")
        return r

    mixed = aggregate(pd.DataFrame([row("qdrop", "cuda", 10.0), row("brecq", "cpu", 40.0)], columns=COLUMNS))
    md = cost_table(mixed, ["tiny_vit"], ["brecq", "qdrop"], "s", "L").markdown()
    assert "40.0 s, 100 MiB (CPU)" in md and "10.0 s, 100 MiB (GPU)" in md and "different devices" in md
    one = aggregate(pd.DataFrame([row("qdrop", "cpu", 10.0), row("brecq", "cpu", 40.0)], columns=COLUMNS))
    md = cost_table(one, ["tiny_vit"], ["brecq", "qdrop"], "s", "L").markdown()
    assert "40.0 s, 100 MiB |" in md and "(CPU)" not in md and "different devices" not in md


def test_acc_vs_time_marks_devices_when_mixed(tmp_path, monkeypatch):
    """CPU and GPU times are not comparable: with mixed devices GPU points are hollow and the
    legend names each device with its fill; with one device it names none."""
    import pandas as pd

    import reports.plots as plots

    seen: list[tuple[list[str], list[int]]] = []
    fills: list[dict[str, object]] = []
    real_save = plots._save

    def spy(fig, dest, stem):
        ax = fig.axes[0]
        lg = ax.get_legend()
        labels = [t.get_text() for t in lg.get_texts()]
        seen.append((labels, [len(c.get_facecolors()) for c in ax.collections]))  # hollow: 0 face colours
        fills.append({t.get_text(): h.get_markerfacecolor() for t, h in zip(lg.get_texts(), lg.legend_handles)})
        return real_save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    agg = pd.DataFrame({"source": "run", "n": 3, "name": ["brecq", "qdrop"], "bits": "W4A4",
                        "quantize_s": [40.0, 15.0], "mean": [94.0, 95.0], "device": ["cpu", "cuda"]})
    plots.accuracy_vs_time(agg, tmp_path)
    plots.accuracy_vs_time(agg.assign(device="cpu"), tmp_path)
    assert seen[0] == (["BRECQ", "QDrop", "W4/A4", "CPU", "GPU"], [1, 0])
    assert fills[0]["GPU"] == "none" and fills[0]["CPU"] != "none"  # the keys show the fills
    assert seen[1] == (["BRECQ", "QDrop", "W4/A4"], [1, 1])


def test_acc_vs_time_gives_every_method_its_own_colour(tmp_path, monkeypatch):
    """The ablation suite plots 12 methods; with the 10-colour cycle the 11th and 12th took the
    1st's and 2nd's colours (Base PTQ and RepQ-ViT were both blue)."""
    import pandas as pd

    import reports.plots as plots

    edges: list[set[str]] = []
    real_save = plots._save

    def spy(fig, dest, stem):
        edges.append({str(c.get_edgecolors()[0].round(3).tolist()) for c in fig.axes[0].collections})
        return real_save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    names = [f"m{i}" for i in range(12)]
    agg = pd.DataFrame({"source": "run", "n": 3, "name": names, "bits": "W4A4", "quantize_s": 10.0,
                        "mean": [80.0 + i for i in range(12)], "device": "cpu"})
    plots.accuracy_vs_time(agg, tmp_path)
    assert len(edges[0]) == 12


def test_report_notes_cells_that_ran_with_a_warning(tmp_path):
    out = tmp_path / "runs"
    make_runs(out)
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert rep.notes == [] and not (rep.dest / "notes.md").exists()
    put(out, "rep", "A", "tiny_vit", "repq_vit", "W4A4", 1, 75.5, finished="2999-01-01T00:00:00",
        warnings=["qdrop: unit blocks.0 (joint stage): its output error ... rose 19.3x"])
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert list(rep.frame.loc[rep.frame["warnings"] > 0, "run_id"]) == ["tiny_vit.repq_vit.w4a4.s1"]
    assert len(rep.notes) == 1 and "1 finished cell(s) ran with a warning" in rep.notes[0]
    assert "tiny_vit.repq_vit.w4a4.s1" in rep.notes[0]
    # the notes are kept beside the tables, and go away with the cause
    assert (rep.dest / "notes.md").read_text() == f"# Notes on rep [A]\n\n- {rep.notes[0]}\n"
    assert r"\item 1 finished cell(s) ran with a warning" in (rep.dest / "notes.tex").read_text()
    put(out, "rep", "A", "tiny_vit", "repq_vit", "W4A4", 1, 75.5, finished="2999-01-02T00:00:00")
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert rep.notes == [] and not (rep.dest / "notes.md").exists() and not (rep.dest / "notes.tex").exists()


def test_report_notes_cells_from_several_source_trees(tmp_path):
    """One table from two versions of the code is said so, with the commits and their cells."""
    out = tmp_path / "runs"
    make_runs(out)
    recs = sorted((out / "rep" / "A").glob("*/record.json"))
    for i, path in enumerate(recs):
        rec = json.loads(path.read_text())
        rec["git_sha"] = "a" * 40 if i else "b" * 40 + "+dirty"
        path.write_text(json.dumps(rec))
    done = sum(json.loads(p.read_text())["status"] == "done" for p in recs[1:])
    assert json.loads(recs[0].read_text())["status"] == "done" and done > 1
    rep = build_report(out, "rep", "A", pdf="no", figures=False)
    assert rep.notes == [f"the finished cells ran from 2 source trees (each record's git_sha): {'a' * 12} "
                         f"({done} cells), {'b' * 12}+dirty (1 cell); a table from one version needs one "
                         "label run at one commit"]
    assert set(rep.frame["git_sha"]) == {"a" * 40, "b" * 40 + "+dirty"}
    rec = json.loads(recs[0].read_text())
    recs[0].write_text(json.dumps({**rec, "git_sha": "a" * 40}))
    assert build_report(out, "rep", "A", pdf="no", figures=False).notes == []


def test_report_notes_close_the_compiled_tables(tmp_path):
    """tables.pdf ends with the notes (escaped LaTeX, `code` in typewriter), read back with pdftotext."""
    require_latex()
    out = tmp_path / "runs"
    make_runs(out)
    put(out, "rep", "A", "tiny_vit", "repq_vit", "W4A4", 1, 75.5, finished="2999-01-01T00:00:00",
        warnings=["a unit's output error rose 19.3x"])
    (out / "rep" / "A" / "tiny_vit.pct_mm.w4a4.s9-0000").mkdir()
    (out / "rep" / "A" / "tiny_vit.pct_mm.w4a4.s9-0000" / "record.json").write_text("{ not json")
    rep = build_report(out, "rep", "A", pdf="yes", figures=False)
    assert len(rep.notes) == 2, rep.notes
    text = subprocess.run(["pdftotext", "-layout", str(rep.pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    pages = text.split("\f")
    notes = " ".join(pages[-2].split()).replace("_", " ")  # pdftotext reads the LaTeX underscore as a space
    assert notes.startswith("Notes on rep [A]"), pages  # the last page, after every table
    assert "1 finished cell(s) ran with a warning" in notes and "tiny vit.repq vit.w4a4.s1" in notes, notes
    assert "1 record file(s) left out, unreadable or malformed" in notes, notes


def test_ablation_bars_scale_to_the_drawn_models(tmp_path, monkeypatch):
    """The y axis (of a dot plot, so it needs no zero) spans the drawn points and error bars with
    a tenth of their range to spare (past 100 where they reach it: a point there is drawn whole);
    a model of the frame that is not drawn does not stretch it."""
    import pandas as pd

    import reports.plots as plots

    limits: list[tuple[float, float]] = []
    real_save = plots._save

    def spy(fig, dest, stem):
        limits.extend(ax.get_ylim() for ax in fig.axes if ax.get_visible())
        return real_save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    agg = pd.DataFrame({"source": "run", "n": 3, "bits": "W4A4", "name": ["a", "b", "a"],
                        "model": ["m1", "m1", "m2"], "mean": [90.0, 99.0, 20.0], "std": [0.5, 0.8, 0.1]})
    plots.ablation_bars(agg, ["m1"], ["a", "b"], tmp_path)
    assert limits == [pytest.approx((89.5 - 1.03, 99.8 + 1.03))]  # 90 - 0.5 to 99 + 0.8, 1.03 to spare


def test_a_report_leaves_no_file_of_an_older_one(tmp_path):
    """Rebuilt with --no-pdf and --no-figures, a report folder holds no PDF or figure of an earlier
    report (they no longer matched its tables); files the report does not write are kept."""
    from reports.build import OUTPUTS

    out = tmp_path / "runs"
    make_runs(out)
    dest = out / "rep" / "A" / "report"
    dest.mkdir(parents=True)
    for name in ("tables.pdf", "acc_vs_bits.png", "ablation.pdf", "paired.md", "mine.txt"):
        (dest / name).write_text("older")
    assert {"tables.pdf", "acc_vs_bits.png", "ablation.pdf", "paired.md"} <= set(OUTPUTS)
    rep = build_report(out, "rep", "A", pdf="no", figures=False, paired="none")
    assert rep.pdf is None and not rep.figures
    left = {p.name for p in dest.iterdir()}
    assert {"tables.pdf", "acc_vs_bits.png", "ablation.pdf", "paired.md"}.isdisjoint(left)
    assert {"main.md", "cost.md", "results.csv", "mine.txt"} <= left
    assert {p.name for p in rep.tables} <= set(OUTPUTS)
    # a folder of the user's (--dest) holding files of a report's names that no report wrote (a
    # paper's main.tex, notes.md): refused before anything is written or removed
    paper = tmp_path / "paper"
    paper.mkdir()
    for name in ("main.tex", "notes.md", "mine.txt"):
        (paper / name).write_text("the user's")
    from mgrq.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--dest .*paper: holds main\.tex, notes\.md, which no report listed as "
                                          r"its own \(\.mgrq-report\.json\): files of yours, .*; expected a new or empty"):
        build_report(out, "rep", "A", pdf="no", figures=True, paired="none", dest=paper)
    assert sorted(p.name for p in paper.iterdir()) == ["main.tex", "mine.txt", "notes.md"]
    assert all((paper / n).read_text() == "the user's" for n in ("main.tex", "mine.txt", "notes.md"))
    # other names are the user's and stay; what a report wrote there (its manifest) is replaced
    (paper / "main.tex").unlink()
    (paper / "notes.md").unlink()
    rep = build_report(out, "rep", "A", pdf="no", figures=True, paired="none", dest=paper)
    drawn = {p.name for p in rep.figures}
    assert "acc_vs_bits.png" in drawn
    rep = build_report(out, "rep", "A", pdf="no", figures=False, paired="none", dest=paper)
    left = {p.name for p in paper.iterdir()}
    assert drawn.isdisjoint(left) and (paper / "mine.txt").read_text() == "the user's"
    assert (paper / "ablation.tex").exists()  # written by both reports (the suite's ablation rows)
    # a comparison into that folder is listed too: the next report keeps it
    make_runs(out, "B", created="2999-01-01T00:00:00")
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--dest", str(paper)]) == 0
    build_report(out, "rep", "A", pdf="no", figures=False, paired="none", dest=paper)
    assert (paper / "compare-A-vs-B.md").exists()
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--dest", str(paper)]) == 0  # rewritten
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "compare-A-vs-B.csv").write_text("the user's")
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--dest", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "compare-A-vs-B.csv").read_text() == "the user's"


def test_acc_vs_time_labels_a_tick_at_both_ends(tmp_path, monkeypatch):
    """The time axis runs from a 1-2-5 tick below the fastest cell to one above the slowest, so
    that no point sits beyond the last labelled tick (1.3 s points had no tick left of them)."""
    import pandas as pd

    import reports.plots as plots

    seen: list[tuple[float, float]] = []
    real_save = plots._save

    def spy(fig, dest, stem):
        seen.append(fig.axes[0].get_xlim())
        return real_save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    agg = pd.DataFrame({"source": "run", "n": 3, "name": ["a", "b", "c"], "bits": "W4A4",
                        "quantize_s": [1.3, 40.0, 480.0], "mean": [80.0, 81.0, 82.0], "device": "cpu"})
    plots.accuracy_vs_time(agg, tmp_path)
    assert seen == [(1.0, 1000.0)]
    assert plots._tick_125(0.9, down=True) == 0.5 and plots._tick_125(2.5, down=False) == 5.0


def test_a_tune_split_table_says_so_and_leaves_out_the_published_rows(tmp_path):
    """Tune-split numbers come from training images: next to published held-out numbers they
    would mislead, so those rows go, and the caption says what the numbers are."""
    out = tmp_path / "runs"
    records.write_record(out / "rep" / "T" / "suite.json", {"models": MODELS, "methods": ["percentile"],
                                                           "bits": ["W4A4"]})
    for model in MODELS:
        put(out, "rep", "T", model, "percentile", "W4A4", 0, 70.0, eval_split="tune")
    md = build_report(out, "rep", "T", pdf="no", figures=False).main_markdown
    assert "Evaluated on the tune split, carved from the training images" in md and "†" not in md
    put(out, "rep", "H", "deit_tiny_patch16_224", "percentile", "W4A4", 0, 70.0)
    records.write_record(out / "rep" / "H" / "suite.json", {"models": MODELS, "methods": ["percentile"],
                                                           "bits": ["W4A4"]})
    md = build_report(out, "rep", "H", pdf="no", figures=False).main_markdown
    assert "tune split" not in md and "| RepQ-ViT † | 4/4 | 57.43 |" in md


def test_every_accuracy_table_of_tune_cells_says_so(tmp_path):
    """The ablation and paired tables are input into a paper on their own: each says the tune split."""
    out = tmp_path / "runs"
    records.write_record(out / "rep" / "T" / "suite.json", {"models": MODELS, "methods": ["percentile", "pct-mm"],
                                                           "bits": ["W4A4"], "ablation": ["percentile", "pct-mm"]})
    for model in MODELS:
        for seed in (0, 1):
            put(out, "rep", "T", model, "percentile", "W4A4", seed, 70.0 + seed, eval_split="tune")
            put(out, "rep", "T", model, "percentile", "W4A4", seed, 60.0, variant="pct-mm", eval_split="tune")
    rep = build_report(out, "rep", "T", pdf="no", figures=False, paired="percentile")
    for name in ("main", "ablation", "paired"):
        for ext in ("md", "tex"):
            assert "Evaluated on the tune split" in (rep.dest / f"{name}.{ext}").read_text(), (name, ext)
    assert "tune split" not in (rep.dest / "cost.md").read_text()  # times, not accuracies


def test_a_label_holding_both_splits_is_refused(tmp_path, capsys):
    """Tune and held-out cells in one label (run from two suite files under one --label) would be
    averaged into one row under one caption: the report refuses, and so does the run."""
    out = tmp_path / "runs"
    make_runs(out)
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 2, 99.0, eval_split="tune")
    with pytest.raises(ReportError, match=r"suite rep \[A\]: its finished cells were evaluated on two splits \(14 "
                                          r"held-out, e\.g\. .*, 1 tune, e\.g\. tiny_vit\.percentile\.w4a4\.s2\); "
                                          r"expected one split per label"):
        build_report(out, "rep", "A", pdf="no", figures=False)
    from harness_helpers import write_suite

    from mgrq.errors import ConfigError
    from mgrq.runner import driver
    from mgrq.runner import executors as ex
    from mgrq.runner.suite import load_suite

    suite = load_suite(write_suite(tmp_path / "rep.yaml", data={"eval_split": "tune"}))
    with pytest.raises(ConfigError, match=r"label A: 14 finished cell\(s\) were evaluated on the held-out split "
                                          r"\(e\.g\. .*\), this grid on the tune split; expected one split per label"):
        driver.run_suite(suite, out, "A", ex.ExecutorOptions(kind="debug"))
    assert main(["suite", "run", str(tmp_path / "rep.yaml"), "--out", str(out), "--label", "A", "--dry-run"]) == 0
    assert "note: the run would stop here: label A: 14 finished cell(s) were evaluated" in capsys.readouterr().out


def test_compare_threshold_must_be_a_finite_number(tmp_path, capsys):
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", shift=-44.0, created="2026-01-02T00:00:00")
    for bad in ("nan", "inf", "-1"):
        assert main(["report", "rep", "--out", str(out), "--compare", "A", "B", "--threshold", bad, "--strict"]) == 2
        assert "expected a finite number >= 0 (points of top-1)" in capsys.readouterr().err


def test_compare_refuses_two_splits_and_names_changed_settings(tmp_path, capsys):
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    records.write_record(out / "rep" / "B" / "suite.json", {"created": "2026-01-02T00:00:00"})
    for model in MODELS:
        put(out, "rep", "B", model, "percentile", "W4A4", 0, 70.0, config={"weight_init": "lp"})
        put(out, "rep", "B", model, "repq_vit", "W4A4", 0, 75.5)
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B"]) == 0
    text = capsys.readouterr().out
    assert ("Settings that differ from A to B (their effect is in the deltas): percentile: config.weight_init "
            "percentile -> lp.") in text
    assert r"config.weight\_init percentile -> lp" in (out / "rep" / "B" / "report" / "compare-A-vs-B.tex").read_text()
    records.write_record(out / "rep" / "C" / "suite.json", {"created": "2026-01-03T00:00:00"})
    put(out, "rep", "C", "tiny_vit", "percentile", "W4A4", 0, 70.0, eval_split="tune")
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "C"]) == 2
    assert ("--compare A C: the finished cells of A on held-out, of C on tune; expected two labels evaluated on "
            "one split") in capsys.readouterr().err


def test_cells_run_with_other_cpu_thread_counts_are_named_in_the_notes_and_the_comparison(tmp_path, capsys):
    """On a CPU a reconstruction's result depends on the torch thread count, which a cell's hash
    does not include: a label resumed with another count (or another executor's default) mixed
    them in one table unnoticed. Cells on a GPU (no CPU thread count) are not compared."""
    out = tmp_path / "runs"
    for label, day in (("A", 1), ("B", 2)):
        records.write_record(out / "rep" / label / "suite.json", {"created": f"2026-01-0{day}T00:00:00"})
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 0, 70.0, threads=1)
    put(out, "rep", "A", "tiny_vit", "percentile", "W4A4", 1, 71.0, threads=1)
    put(out, "rep", "A", "tiny_vit", "repq_vit", "W4A4", 0, 75.0, threads=2)
    put(out, "rep", "A", "tiny_deit", "repq_vit", "W4A4", 0, 75.0)  # on a GPU: nothing to compare
    put(out, "rep", "A", "tiny_vit", "base_ptq", "W4A4", 0, 60.0, threads=1)
    put(out, "rep", "A", "tiny_deit", "base_ptq", "W4A4", 0, 60.0, threads=2.5)  # malformed: left blank
    rep = build_report(out, "rep", "A", pdf="no", figures=False, published=False)
    (note,) = [n for n in rep.notes if "cpu_threads" in n]
    assert "all rows: cpu_threads = 1 (3 cells), 2 (1 cell);" in note, note
    raw = pd.read_csv(rep.dest / "results.csv", dtype=str, keep_default_na=False)
    assert sorted(raw["cpu_threads"]) == ["", "", "1", "1", "1", "2"] and set(raw["n_eval"]) == {"50"}
    for seed in (0, 1):
        put(out, "rep", "B", "tiny_vit", "percentile", "W4A4", seed, 70.0, threads=2)
    put(out, "rep", "B", "tiny_deit", "repq_vit", "W4A4", 0, 75.0, threads=2)  # A ran it on a GPU
    put(out, "rep", "B", "tiny_vit", "base_ptq", "W4A4", 0, 60.0)  # B runs it on a GPU: not compared
    assert main(["report", "rep", "--out", str(out), "--compare", "A", "B"]) == 0
    text = capsys.readouterr().out
    assert "Settings that differ from A to B (their effect is in the deltas): percentile: cpu_threads 1 -> 2." in text
    assert "base_ptq: cpu_threads" not in text and "(unset)" not in text
    from mgrq.tracking import flat_params  # MLflow's params carry it too, for a CPU cell only

    (rec_b,) = [records.read_record(p) for p in (out / "rep" / "B").glob("tiny_vit.percentile*s0-*/record.json")]
    assert flat_params(rec_b)["cpu_threads"] == "2"
    assert "cpu_threads" not in flat_params({**rec_b, "device": "cuda:0"})


def test_a_copied_label_folder_reports_under_its_own_name(tmp_path):
    """The records of a copied (or renamed) label folder still carry the old label: the folder
    decides, so a cell rerun there replaces its copy instead of counting twice."""
    import shutil

    out = tmp_path / "runs"
    make_runs(out)
    shutil.copytree(out / "rep" / "A", out / "rep" / "M")
    put(out, "rep", "M", "tiny_vit", "percentile", "W4A4", 1, 90.0, eval_limit=20, finished="2999-01-01T00:00:00")
    rep = build_report(out, "rep", "M", pdf="no", figures=False)
    cells = rep.frame[(rep.frame["model"] == "tiny_vit") & (rep.frame["name"] == "percentile")
                      & (rep.frame["bits"] == "W4A4")]
    assert sorted(cells["top1"]) == [70.0, 90.0] and set(rep.frame["label"]) == {"M"}


def test_ablation_rows_that_differ_beyond_their_switched_off_parts_get_a_note(tmp_path):
    """An MGRQ term ablation should differ in its terms only. ``w_global`` set for ``mgrq`` alone
    (``overrides.mgrq`` does not reach the variants, which are other methods) is named; what a
    variant pins or switches off (``mgrq_obwr``'s zero weights, their settings) is not."""
    out = tmp_path / "runs"
    rows = ["mgrq_obwr", "mgrq_obwr_global", "mgrq"]
    records.write_record(out / "abl" / "L" / "suite.json", {"models": ["tiny_vit"], "methods": rows,
                                                           "bits": ["W4A4"], "ablation": rows})
    for seed in (0, 1):
        put(out, "abl", "L", "tiny_vit", "mgrq_obwr", "W4A4", seed, 90.0)
        put(out, "abl", "L", "tiny_vit", "mgrq_obwr_global", "W4A4", seed, 90.5)
        put(out, "abl", "L", "tiny_vit", "mgrq", "W4A4", seed, 91.0, config={"w_global": 0.1, "local_metric": "mse"})
    notes = build_report(out, "abl", "L", pdf="no", figures=False).notes
    assert notes == ["the ablation table's rows differ in more than the parts each switches off: config.w_global = "
                     "0.03 (mgrq_obwr_global), 0.1 (mgrq); check that these are the differences the ablation is about"]
    records.write_record(out / "abl" / "M" / "suite.json", {"models": ["tiny_vit"], "methods": rows,
                                                           "bits": ["W4A4"], "ablation": rows})
    for seed in (0, 1):  # the same weight everywhere it acts: no note (local_metric acts in mgrq only)
        put(out, "abl", "M", "tiny_vit", "mgrq_obwr", "W4A4", seed, 90.0)
        put(out, "abl", "M", "tiny_vit", "mgrq_obwr_global", "W4A4", seed, 90.5, config={"w_global": 0.1})
        put(out, "abl", "M", "tiny_vit", "mgrq", "W4A4", seed, 91.0, config={"w_global": 0.1, "local_metric": "mse"})
    assert build_report(out, "abl", "M", pdf="no", figures=False).notes == []


def test_ablation_rows_of_older_records_are_compared_as_they_ran(tmp_path):
    """Records of older code hold fields since removed and values today's checks refuse (the old
    defaults global_batch=0, local_metric=moments in every row): what a row switched off is still
    read from its values, so no false difference is named. A layer policy one row lacks is named."""
    import json

    out = tmp_path / "runs"
    rows = ["mgrq_obwr", "mgrq"]
    records.write_record(out / "abl" / "O" / "suite.json", {"models": ["tiny_vit"], "methods": rows,
                                                           "bits": ["W4A4"], "ablation": rows})
    for seed in (0, 1):
        put(out, "abl", "O", "tiny_vit", "mgrq_obwr", "W4A4", seed, 90.0)
        put(out, "abl", "O", "tiny_vit", "mgrq", "W4A4", seed, 91.0)
    for path in (out / "abl" / "O").glob("*/record.json"):
        rec = json.loads(path.read_text())
        rec["method"]["config"].update(tf32=True, global_batch=0, local_metric="moments")
        path.write_text(json.dumps(rec))
    assert build_report(out, "abl", "O", pdf="no", figures=False).notes == []
    put(out, "abl", "O", "tiny_vit", "mgrq", "W4A4", 0, 91.0, image_bits=6, finished="2999-01-01T00:00:00")
    put(out, "abl", "O", "tiny_vit", "mgrq", "W4A4", 1, 91.0, image_bits=6, finished="2999-01-01T00:00:00")
    notes = build_report(out, "abl", "O", pdf="no", figures=False).notes
    assert any("rows differ in more than the parts each switches off: image_bits = 8 (mgrq_obwr), 6 (mgrq)" in n
               for n in notes), notes


def test_setup_table_gives_each_rows_calibration_and_settings_off_their_defaults(tmp_path):
    """Each row's budget and settings, read from its records: what differs from the method's
    registered defaults (a suite's overrides, a variant's own settings, an image bit-width),
    values that differ between a row's cells joined by ``/``; a row at its defaults shows a
    dash. It compiles into the report's PDF."""
    out = tmp_path / "runs"
    rows = ["percentile", "pct8", "mgrq_obwr", "mgrq"]
    records.write_record(out / "st" / "L" / "suite.json", {"models": ["tiny_vit"], "methods": rows,
                                                          "bits": ["W4A4"]})
    for seed in (0, 1):
        put(out, "st", "L", "tiny_vit", "percentile", "W4A4", seed, 90.0)
        put(out, "st", "L", "tiny_vit", "percentile", "W4A4", seed, 90.0, variant="pct8",
            config={"act_init": "minmax"}, image_bits=6)
        put(out, "st", "L", "tiny_vit", "mgrq_obwr", "W4A4", seed, 91.0, config={"iters": 100})
        put(out, "st", "L", "tiny_vit", "mgrq", "W4A4", seed, 92.0, config={"iters": 100 + 50 * seed, "w_local": 0.0})
    rep = build_report(out, "st", "L", pdf="auto", published=False, figures=False)
    md = (rep.dest / "setup.md").read_text().splitlines()
    assert md[2:] == [
        "| Method | Runs as | Calib. | Settings |", "|:--|:--|--:|:--|",
        "| Percentile | `percentile` | 32 | – |",
        "| pct8 | `percentile` | 32 | `act_init=minmax`, `image_bits=6` |",
        "| MGRQ: OBWR only | `mgrq_obwr` | 32 | `iters=100` |",
        "| MGRQ | `mgrq` | 32 | `iters=100/150`, `w_local=0.0` |",
    ]
    tex = (rep.dest / "setup.tex").read_text()
    assert (r"MGRQ & \texttt{mgrq} & 32 & \parbox[t]{0.45\linewidth}{\raggedright \texttt{iters=100/150}, "
            r"\allowbreak \texttt{w\_local=0.0}} \\") in tex
    assert r"\label{tab:st-setup}" in tex
    require_latex()  # the rest needs pdflatex: skipped without it, a failure under MGRQ_REQUIRE_LATEX=1
    assert rep.pdf is not None, rep.pdf_note  # the setup table is a page of the compiled tables
    text = subprocess.run(["pdftotext", "-layout", str(rep.pdf), "-"], capture_output=True,
                          text=True, check=True).stdout
    text = " ".join(text.replace("_", " ").split())  # pdftotext reads a typewriter \_ as a space
    assert "pct8 percentile 32 act init=minmax, image bits=6" in text, text


def _compile(doc: Path, preamble: str, body: str) -> str:
    """pdflatex a document of ``body`` in ``doc``; returns its log."""
    (doc / "t.tex").write_text(f"\\documentclass{preamble}\n\\usepackage{{booktabs,graphicx}}\n"
                               f"\\begin{{document}}\n{body}\\end{{document}}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "t.tex"], cwd=doc,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    return (doc / "t.log").read_text(errors="replace")


def test_tables_fit_a_two_column_paper(tmp_path):
    """Each table is scaled down to the column where it is wider, and only there (a table that
    fits keeps its size); ``--float table*`` makes them span both columns. Two tables of one
    report \\input into one paper compile together (one shared box)."""
    require_latex()
    out = tmp_path / "runs"
    make_runs(out)
    rep = build_report(out, "rep", "A", pdf="no", figures=False, paired="repq_vit")
    doc = tmp_path / "doc"
    doc.mkdir()
    names = ("main", "ablation", "paired", "cost", "setup")
    for f in names:
        (doc / f"{f}.tex").write_text((rep.dest / f"{f}.tex").read_text())
    inputs = "".join(f"\\input{{{f}.tex}}\n" for f in names)
    log = _compile(doc, "[twocolumn]{article}", inputs)
    assert "Overfull \\hbox" not in log, log[-3000:]
    assert r"\resizebox" in (rep.dest / "paired.tex").read_text()
    # the test's paired table is 1.3 columns wide: without the box it overflows a column
    (doc / "bare.tex").write_text((doc / "paired.tex").read_text().replace("\\resizebox{\\linewidth}{!}", ""))
    assert "Overfull \\hbox" in _compile(doc, "[twocolumn]{article}", "\\input{bare.tex}\n")
    build_report(out, "rep", "A", pdf="no", figures=False, paired="repq_vit", float_env="table*")
    for f in names:
        text = (rep.dest / f"{f}.tex").read_text()
        assert "\\begin{table*}[t]" in text and text.rstrip().endswith("\\end{table*}"), f
    with pytest.raises(ConfigError, match=r"--float figure: expected table or table\* \(every table\)"):
        build_report(out, "rep", "A", pdf="no", figures=False, float_env="figure")


def test_one_tables_float_and_a_second_tex_key_for_two_labels_in_one_paper(tmp_path, capsys):
    """``--float TABLE=ENV`` sets one table's float and wins over a plain ``--float ENV`` in
    either order; ``--tex-key`` gives a label's tables other ``\\label``s, so that two labels of
    one suite compile in one paper without a multiply-defined label (which they do without it)."""
    require_latex()
    out = tmp_path / "runs"
    make_runs(out, "A", created="2026-01-01T00:00:00")
    make_runs(out, "B", shift=-1.0, created="2026-01-02T00:00:00")
    base = ["report", "rep", "--out", str(out), "--no-pdf", "--no-figures", "--paired", "repq_vit"]

    def envs(dest: Path) -> dict[str, str]:
        return {f: re.search(r"\\begin\{(table\*?)\}", (dest / f"{f}.tex").read_text()).group(1)
                for f in ("main", "ablation", "paired", "cost", "setup")}

    a, b = tmp_path / "A", tmp_path / "B"
    assert main([*base, "--label", "A", "--dest", str(a), "--float", "paired=table*"]) == 0
    assert envs(a) == {"main": "table", "ablation": "table", "paired": "table*", "cost": "table", "setup": "table"}
    for order in (["table*", "main=table"], ["main=table", "table*"]):
        assert main([*base, "--label", "A", "--dest", str(a), *(x for f in order for x in ("--float", f))]) == 0
        assert envs(a) == {"main": "table", "ablation": "table*", "paired": "table*", "cost": "table*",
                           "setup": "table*"}, order
    assert main([*base, "--label", "B", "--dest", str(b), "--tex-key", "rep-B"]) == 0
    assert "\\label{tab:rep-B-main}" in (b / "main.tex").read_text()
    assert "\\label{tab:rep-B-setup}" in (b / "setup.tex").read_text()
    assert "\\label{tab:rep-main}" in (a / "main.tex").read_text()  # the default key: the suite's name
    doc = tmp_path / "doc"
    doc.mkdir()

    def paper() -> str:
        for side in (a, b):
            for f in ("main", "paired", "setup"):
                (doc / f"{side.name}-{f}.tex").write_text((side / f"{f}.tex").read_text())
        body = "".join(f"\\input{{{s}-{f}.tex}}\n" for s in "AB" for f in ("main", "paired", "setup"))
        body += "See \\ref{tab:rep-main}.\n"
        _compile(doc, "[twocolumn]{article}", body)
        return _compile(doc, "[twocolumn]{article}", body)  # the second run reads the labels back (the .aux)

    assert "multiply defined" not in paper()
    assert main([*base, "--label", "B", "--dest", str(b)]) == 0  # without --tex-key: the labels clash
    assert "multiply defined" in paper()
    capsys.readouterr()
    cmp = ["report", "rep", "--out", str(out), "--compare", "A", "B", "--dest", str(tmp_path / "C")]
    assert main([*cmp, "--float", "compare=table*", "--tex-key", "night"]) == 0
    text = (tmp_path / "C" / "compare-A-vs-B.tex").read_text()
    assert "\\begin{table*}" in text and "\\label{tab:night-compare}" in text
    capsys.readouterr()
    for args, msg in (
        ([*base, "--float", "figure"], "--float figure: expected table or table* (every table), or TABLE=table* "
                                       "with TABLE one of main, ablation, paired, cost, setup"),
        ([*base, "--float", "mian=table*"], "--float mian=table*: 'mian' is not a table this command writes. "
                                            "Did you mean 'main'?"),
        ([*base, "--float", "compare=table*"], "'compare' is not a table this command writes (it is written by "
                                               "--compare)"),
        ([*cmp, "--float", "main=table*"], "'main' is not a table this command writes (a one-label report writes "
                                           "it). Expected TABLE one of compare"),
        ([*base, "--float", "table", "--float", "table*"], "--float table*: every table was given table already"),
        ([*base, "--float", "main=table*", "--float", "main=table"], "--float main=table: table main was given "
                                                                      "table* already"),
        ([*base, "--tex-key", "my key"], "--tex-key 'my key': expected letters, digits and _ . : -"),
    ):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err


def test_captions_say_the_seeds_the_std_and_a_suites_own_lead(tmp_path):
    """A caption says the std is the sample std, says when a table is one seed per cell, and
    keeps those sentences (and the image count, a range where cells differ) under a suite's own
    ``report.caption``, which replaces only the lead; where rows calibrate on different numbers of
    images, it says which on how many. The ablation's Avg. column gets its best in bold, as the
    others."""
    out = tmp_path / "runs"
    make_runs(out)
    rep = build_report(out, "rep", "A", pdf="no", figures=False, published=False)
    md = (rep.dest / "main.md").read_text()
    assert "Mean ± std over the seeds that finished: 1 to 2 per cell (sample std, n−1)." in md
    abl = (rep.dest / "ablation.md").read_text()
    assert "| Percentile | 4/4 | **71.00** ± 1.41 | **71.00** ± 1.41 | **71.00** |" in abl
    assert "| pct-mm | 4/4 | 60.50 ± 0.71 | 60.50 ± 0.71 | 60.50 |" in abl
    assert r"\textbf{71.00} \\" in (rep.dest / "ablation.tex").read_text()
    records.write_record(out / "one" / "L" / "suite.json", {"models": ["tiny_vit"], "methods": ["percentile"],
                                                           "bits": ["W4A4"], "caption": "Top-1 of our methods."})
    put(out, "one", "L", "tiny_vit", "percentile", "W4A4", 0, 70.0)
    put(out, "one", "L", "tiny_vit", "percentile", "W4A4", 0, 70.0, variant="p2", eval_limit=20, n_eval=20)
    rep = build_report(out, "one", "L", pdf="no", figures=False)
    md = (rep.dest / "main.md").read_text()
    assert md.startswith("**Top-1 of our methods, evaluated on 20 to 50 images per cell (see the notes). "
                         "Best per column and bit-width in bold. One seed per cell.**"), md
    assert ("the finished cells were evaluated on different numbers of images: 20 (1 cell), 50 (1 cell); a mean "
            "over them mixes evaluations (`results.csv` has each cell's n_eval)") in rep.notes
    put(out, "one", "L", "tiny_vit", "qdrop", "W4A4", 0, 71.0, calib=256)  # rows on other budgets: said
    md = (build_report(out, "one", "L", pdf="no", figures=False).dest / "main.md").read_text()
    assert "One seed per cell. Calibration images: 32 (Percentile, p2); 256 (QDrop).**" in md, md


def test_a_record_run_with_other_settings_than_the_labels_grid_has_no_result(tmp_path, capsys):
    """A method's override changed and only another method was run again (`--only`): `suite
    status` shows the changed method's cell pending, and the report leaves its old record out with
    a note, instead of filling the cell with the old settings' number. Back to the old settings,
    the old record is the cell's result again (no rerun needed)."""
    from harness_helpers import write_suite

    out = tmp_path / "runs"
    kw = {"methods": ["percentile", "base_ptq"], "eval_limit": 50}
    suite = write_suite(tmp_path / "grid.yaml", **kw)
    run = ["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug", "--threads", "1",
           "--no-mirror", "--no-pdf", "--no-report"]
    assert main(run) == 0
    write_suite(suite, **kw, overrides={"base_ptq": {"calib": 4}})
    assert main([*run, "--only", r"\.percentile\."]) == 0
    capsys.readouterr()
    assert main(["suite", "status", str(suite), "--out", str(out), "--label", "L"]) == 0
    status = capsys.readouterr().out
    assert re.search(r"pending\s+tiny_vit\.base_ptq\.w4a4\.s0", status), status
    rep = build_report(out, "grid", "L", pdf="no", published=False, figures=False)
    assert "Base PTQ" not in rep.main_markdown and "Percentile" in rep.main_markdown
    (note,) = [n for n in rep.notes if "other settings" in n]
    assert note.startswith("1 record(s) left out: they ran with other settings than the label's grid as last run") \
        and "L/tiny_vit.base_ptq.w4a4.s0-" in note, rep.notes
    assert any("1 of the 2 cells of the grid have no finished result" in n for n in rep.notes), rep.notes
    write_suite(suite, **kw)  # the settings the record ran with: it is the cell's result again
    assert main(run) == 0 and "2 skipped (done before)" in capsys.readouterr().out
    rep = build_report(out, "grid", "L", pdf="no", published=False, figures=False)
    assert "Base PTQ" in rep.main_markdown and not [n for n in rep.notes if "other settings" in n], rep.notes


def test_a_suite_file_given_to_report_gives_its_report_block(tmp_path, capsys):
    """`mgrq report FILE.yaml` after editing the file's report: block (names, ablation, paired)
    uses the edited block, with a note; `mgrq report NAME` keeps the label's."""
    from harness_helpers import write_suite

    out = tmp_path / "runs"
    kw = {"methods": ["percentile", "base_ptq"], "eval_limit": 20}
    suite = write_suite(tmp_path / "rb.yaml", **kw, report={"names": {"base_ptq": "Basic"}})
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--threads", "1", "--no-mirror", "--no-report"]) == 0
    write_suite(suite, **kw, report={"names": {"base_ptq": "Plain PTQ"}, "paired": "percentile"})
    capsys.readouterr()
    assert main(["report", str(suite), "--out", str(out), "--label", "L", "--no-pdf", "--no-figures",
                 "--no-published"]) == 0
    text = capsys.readouterr().out
    assert "| Plain PTQ | 4/4 |" in text and "top-1 of Percentile minus each method" in text, text
    assert f"note: report.paired, report.names from {suite}, not as label L ran with it" in text, text
    assert main(["report", "rb", "--out", str(out), "--label", "L", "--no-pdf", "--no-figures",
                 "--no-published"]) == 0
    text = capsys.readouterr().out
    assert "| Basic | 4/4 |" in text and "Plain PTQ" not in text and "Paired" not in text, text
    assert "not as label L ran with it" not in text
    # and a comparison of two labels prints the file's names too
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "M", "--executor", "debug",
                 "--threads", "1", "--no-mirror", "--no-report"]) == 0
    write_suite(suite, **kw, report={"names": {"base_ptq": "Plainer PTQ"}})
    capsys.readouterr()
    assert main(["report", str(suite), "--out", str(out), "--compare", "L", "M"]) == 0
    text = capsys.readouterr().out
    assert "| tiny ViT | Plainer PTQ | 4/4 |" in text and "Basic" not in text, text
    assert f"note: report.names from {suite}, not as label M ran with it" in text, text


def test_greek_letters_in_printed_names_compile(tmp_path):
    """A row name with Greek letters ("IBLS (σ)"): pdflatex's default fonts lack the letters, so
    tex() writes them as math; the PDF shows them."""
    require_latex()
    from reports.build import compile_pdf
    from reports.tables import tex

    greek = "αβγδεζηθικλμνξοπρςστυφχψω ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"
    (tmp_path / "g.tex").write_text(f"IBLS (σ): {tex(greek)}\n".replace("σ)", tex("σ)"), 1))
    pdf = compile_pdf(tmp_path, ["g.tex"])
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    # the math fonts' μ, Δ, Ω read back as the micro, increment and ohm signs
    text = text.translate(str.maketrans("\u00b5\u2206\u2126", "\u03bc\u0394\u03a9"))
    latin = str.maketrans("ΑΒΕΖΗΙΚΜΝΟΡΤΧο", "ABEZHIKMNOPTXo")  # letters LaTeX prints as Latin ones
    missing = [ch for ch in greek.translate(latin) if ch != " " and ch not in text]
    assert "IBLS (σ)" in text and not missing, (text, missing)


def test_a_printed_name_starting_with_a_bracket_compiles_as_a_table_row(tmp_path):
    """A row after ``\\\\`` whose name starts with "[" was read as the line break's optional
    argument: pdflatex stopped ("Illegal unit of measure")."""
    require_latex()
    from reports.build import compile_pdf
    from reports.tables import tex

    rows = [tex(n) + r" & 1 \\" for n in ("Full Prec.", "[W8] head", "[x]")]
    (tmp_path / "t.tex").write_text("\\begin{tabular}{lr}\n" + "\n".join(rows) + "\n\\end{tabular}\n")
    text = subprocess.run(["pdftotext", str(compile_pdf(tmp_path, ["t.tex"])), "-"], capture_output=True,
                          text=True, check=True).stdout
    assert "[W8] head" in text and "[x]" in text, text


def test_report_main_keeps_the_ablation_variants_out_of_the_main_table_and_figures(tmp_path, figs):
    """`report.main` lists the rows of the main table and figures (a paper's baselines and its
    method); the ablation table keeps its own rows, and a row keeps its colour across figures."""
    from harness_helpers import write_suite
    from matplotlib.colors import to_hex

    out = tmp_path / "runs"
    methods = ["percentile", "base_ptq", {"name": "percentile", "variant": "pct-b"}]
    suite = write_suite(tmp_path / "mr.yaml", methods=methods, eval_limit=20,
                        report={"main": ["percentile", "pct-b"], "ablation": ["base_ptq", "pct-b"]})
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--threads", "1", "--no-mirror", "--no-report"]) == 0
    rep = build_report(out, "mr", "L", pdf="no", published=False)
    rows = [ln.split("|")[1].strip() for ln in rep.main_markdown.splitlines() if ln.startswith("| ")][1:]
    assert rows == ["Full Prec.", "Percentile", "pct-b"], rows
    abl = (rep.dest / "ablation.md").read_text()
    assert "| Base PTQ |" in abl and "| pct-b |" in abl
    bits_fig, abl_fig = figs["acc_vs_bits"], figs["ablation"]
    drawn = {c.get_label(): to_hex(c.lines[0].get_color()) for c in bits_fig.axes[0].containers}
    dots = {c.get_label(): to_hex(c.lines[0].get_color()) for c in abl_fig.axes[0].containers}
    assert set(drawn) == {"Percentile", "pct-b"} and drawn["pct-b"] == dots["pct-b"], (drawn, dots)
    from reports.plots import OKABE_ITO

    assert drawn == {"Percentile": OKABE_ITO[0].lower(), "pct-b": OKABE_ITO[-1].lower()}  # main rows: Okabe-Ito
    assert dots["Base PTQ"] not in drawn.values()
    time_fig = figs["acc_vs_time"]
    (legend,) = [ax.get_legend() for ax in time_fig.axes if ax.get_legend()]
    assert "Base PTQ" not in {t.get_text() for t in legend.get_texts()}
    cost = (rep.dest / "cost.md").read_text().splitlines()[0]  # every cell ran on this machine's CPU
    assert "Every cell ran on CPU; peak memory: resident set size of the whole process" in cost and "CUDA" not in cost


def test_paper_captions_leave_out_the_suite_and_label(tmp_path, capsys):
    """--paper-captions: no caption names the suite and label (a paper's), the \\label still
    does; without it every caption does."""
    out = tmp_path / "runs"
    make_runs(out)
    assert main(["report", "rep", "--out", str(out), "--label", "A", "--no-pdf", "--no-figures", "--paired",
                 "repq_vit", "--paper-captions"]) == 0
    d = out / "rep" / "A" / "report"
    texs = {f: (d / f).read_text() for f in ("main.tex", "ablation.tex", "paired.tex", "cost.tex", "setup.tex")}
    for f, tex in texs.items():
        caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
        assert "suite rep" not in caption and "(A)" not in caption, (f, caption)
        assert "\\label{tab:rep-" in tex, f
    assert "Avg.: the mean over the models. Best per column and bit-width in bold." in texs["ablation.tex"]
    cost = re.search(r"\\caption\{(.*)\}", texs["cost.tex"]).group(1)  # make_runs' records name no device
    assert "CUDA allocated on GPU, resident set size of the whole process" in cost
    capsys.readouterr()
    assert main(["report", "rep", "--out", str(out), "--label", "A", "--no-figures", "--fig-width", "3.5"]) == 2
    assert "--fig-width: not used by a report with --no-figures" in capsys.readouterr().err
    assert main(["report", "rep", "--out", str(out), "--label", "A", "--no-pdf", "--no-figures", "--paired",
                 "repq_vit"]) == 0
    for f in texs:
        assert re.search(r"\\caption\{[^}]*suite rep \(A\)", (d / f).read_text()), f


def test_the_cost_caption_names_one_device_only_when_every_cell_ran_on_it():
    """A cell whose seeds ran on the CPU and the GPU ("cpu+cuda") is mixed even when every cell
    is: the caption then marks devices and warns, instead of "Every cell ran on CPU+GPU"."""
    from reports.tables import cost_table

    def caption(devices: list[str]) -> str:
        agg = pd.DataFrame({"source": "run", "n": 3, "model": "tiny_vit", "name": ["a", "b"], "bits": "W4A4",
                            "quantize_s": 1.0, "peak_mem_mb": 100.0, "device": devices})
        return cost_table(agg, ["tiny_vit"], ["a", "b"], "s", "L").caption

    assert "Every cell ran on GPU; peak memory: CUDA memory allocated." in caption(["cuda", "cuda"])
    both = caption(["cpu+cuda", "cpu+cuda"])
    assert "Every cell" not in both and "compare times only on one device" in both
