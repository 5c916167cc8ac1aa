"""Figures ready for a paper: TrueType fonts, a text-width size with readable text, keys that
cannot be confused, colour-blind-safe styles, an honest ablation plot, error bars explained."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.text import Text

import reports.plots as plots

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["tiny_vit", "tiny_deit"]
METHODS = ["percentile", "base_ptq", "ptq4vit", "repq_vit", "brecq", "qdrop", "mgrq_obwr", "mgrq"]


def frame(seeds: int = 1, names: list[str] = METHODS) -> pd.DataFrame:
    """An aggregate frame: every method on every model at W4A4 and W3A3, ``seeds`` seeds each."""
    rows = [{"source": "run", "model": m, "name": n, "bits": b, "n": seeds, "mean": 80.0 + i + k - 5 * j,
             "std": 0.5 if seeds > 1 else float("nan"), "fp": 97.0, "quantize_s": 2.0 + i, "device": "cpu"}
            for k, m in enumerate(MODELS) for i, n in enumerate(names) for j, b in enumerate(["W4A4", "W3A3"])]
    return pd.DataFrame(rows)


def draw_all(agg: pd.DataFrame, dest, names: list[str] = METHODS) -> list:
    return [*plots.accuracy_vs_bits(agg, MODELS, names, dest),
            *plots.ablation_bars(agg, MODELS, ["mgrq_obwr", "mgrq"], dest),
            *plots.accuracy_vs_time(agg, dest, names)]


def test_pdfs_embed_truetype_fonts_at_text_width_without_touching_rcparams(tmp_path, figs):
    before = matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["font.size"]
    paths = draw_all(frame(), tmp_path)
    for p in paths:
        if p.suffix == ".pdf":
            pdf = p.read_bytes()
            assert b"/Type3" not in pdf and b"/FontFile2" in pdf, p.name  # TrueType embedded
            box = re.search(rb"/MediaBox \[\s*0 0 ([\d.]+) ([\d.]+)", pdf)
            assert box and float(box.group(1)) == 7 * 72, p.name  # the full text width
    assert (matplotlib.rcParams["pdf.fonttype"], matplotlib.rcParams["font.size"]) == before
    for stem, fig in figs.items():  # at \textwidth, no text is under 7 pt or over 9 pt
        sizes = {t.get_fontsize() for t in fig.findobj(Text) if t.get_text() and t.get_visible()}
        assert sizes and min(sizes) >= 7 and max(sizes) <= 9, (stem, sizes)


def test_acc_vs_bits_tells_methods_apart_without_colour(tmp_path, figs):
    """Each method has a marker of its own and an Okabe-Ito colour (none grey: Full Prec. is the
    grey dashed line); one seed: no error bar, no error-bar glyph in the legend, no note."""
    plots.accuracy_vs_bits(frame(), MODELS, METHODS, tmp_path)
    fig = figs["acc_vs_bits"]
    lines = [c.lines[0] for c in fig.axes[0].containers]
    assert len({ln.get_marker() for ln in lines}) == len(METHODS)
    assert {to_hex(ln.get_color()).upper() for ln in lines} == set(plots.OKABE_ITO)
    (fp,) = fig.axes[0].get_lines()[-1:]
    assert fp.get_label() == "Full Prec." and fp.get_linestyle() == "--" and fp.get_marker() == "None"
    assert all(not c.has_yerr for ax in fig.axes for c in ax.containers)
    (legend,) = fig.legends
    assert legend.get_title().get_text() == ""


def test_error_bars_are_drawn_and_named_only_with_several_seeds(tmp_path, figs):
    draw_all(frame(seeds=3), tmp_path)
    for stem in ("acc_vs_bits", "ablation"):
        fig = figs[stem]
        assert all(c.has_yerr for ax in fig.axes for c in ax.containers), stem
        assert fig.legends[0].get_title().get_text() == "error bars: ±1 sample std over seeds", stem
    draw_all(frame(seeds=1), tmp_path)
    for stem in ("acc_vs_bits", "ablation"):
        assert not any(c.has_yerr for ax in figs[stem].axes for c in ax.containers), stem


def test_ablation_is_a_dot_plot_each_panel_on_its_own_y_range(tmp_path, figs):
    """No bars (whose lengths a cut axis exaggerates): points, each bit-width's panel on the range
    of its own points (one range for both squeezed W4A4's differences by W3A3's lower values)."""
    plots.ablation_bars(frame(), MODELS, ["mgrq_obwr", "mgrq"], tmp_path)
    fig = figs["ablation"]
    assert not any(ax.patches for ax in fig.axes)
    # W4A4's points 86-88, W3A3's 81-83; a tenth of the range to spare, at least 0.5
    lims = {ax.get_title(): ax.get_ylim() for ax in fig.axes}
    assert lims == {"W4/A4": pytest.approx((85.5, 88.5)), "W3/A3": pytest.approx((80.5, 83.5))}


def test_acc_vs_time_method_and_bit_width_keys_cannot_be_confused(tmp_path, figs):
    """A method's key is a bar of its colour (no marker); a bit-width's a hollow black marker."""
    plots.accuracy_vs_time(frame(), tmp_path, METHODS)
    fig = figs["acc_vs_time"]
    assert [ax.get_title() for ax in fig.axes] == ["tiny ViT", "tiny DeiT"]  # a panel per model
    (legend,) = [ax.get_legend() for ax in fig.axes if ax.get_legend()]  # right of the top right panel
    assert fig.axes[1].get_legend() is legend
    ys = [sorted(float(c.get_offsets()[0][1]) for c in ax.collections) for ax in fig.axes]
    assert len(ys[0]) == 16 and ys[1] == [y + 1.0 for y in ys[0]]  # each panel its model's cells (frame: +1 per model)
    keys = {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles)}
    methods = [keys[n] for n in ("Percentile", "MGRQ")]
    assert all(h.get_marker() in ("None", "", None) for h in methods)
    assert to_hex(keys["MGRQ"].get_color()) not in {to_hex("gray"), to_hex("C7")}
    for b in ("W4/A4", "W3/A3"):
        assert keys[b].get_markerfacecolor() == "none" and to_hex(keys[b].get_markeredgecolor()) == "#000000"
    assert keys["W4/A4"].get_marker() != keys["W3/A3"].get_marker()


def test_more_methods_than_the_palette_still_get_distinct_styles(tmp_path, figs):
    names = [f"m{i}" for i in range(12)]
    plots.accuracy_vs_bits(frame(names=names), MODELS, names, tmp_path)
    lines = [c.lines[0] for c in figs["acc_vs_bits"].axes[0].containers]
    styles = {(to_hex(ln.get_color()), ln.get_marker(), ln.get_linestyle()) for ln in lines}
    assert len(styles) == 12 and len({to_hex(ln.get_color()) for ln in lines}) == 12
    assert not {to_hex(ln.get_color()) for ln in lines} & {to_hex("#7f7f7f"), to_hex("#c7c7c7")}  # no grey


def test_the_legends_under_the_panels_fit_the_figures_width(tmp_path, figs):
    """The ablation-mgrq suite's 11 rows (the MGRQ variants' names are long) in acc_vs_bits and
    the ablation figure: every legend entry, Full Prec. included, lies on the figure (5 columns
    of them ran off both sides)."""
    import yaml

    names = yaml.safe_load((ROOT / "suites" / "ablation-mgrq.yaml").read_text())["methods"]
    agg = frame(names=names)
    plots.accuracy_vs_bits(agg, MODELS, names, tmp_path)
    plots.ablation_bars(agg, MODELS, names[6:], tmp_path, order=names)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for stem, n_entries in (("acc_vs_bits", len(names) + 1), ("ablation", len(names) - 6)):
        fig = figs[stem]
        FigureCanvasAgg(fig).draw()  # closed by _save: laid out again at the figure's own dpi
        (legend,) = fig.legends
        texts = {t.get_text() for t in legend.get_texts()}
        assert len(texts) == n_entries and ("Full Prec." in texts) == (stem == "acc_vs_bits"), texts
        page = fig.bbox
        for t in legend.get_texts():
            box = t.get_window_extent()
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0, (stem, t.get_text(), box, page)


def test_a_long_legend_stays_on_the_figure_and_a_variant_keeps_its_style(tmp_path, figs):
    """acc_vs_time's legend, right of the plot, takes a second column before it runs off the
    figure (16 methods + 2 bit-widths); the ablation's variants have the colour and marker they
    have in acc_vs_bits; a point at 100% is drawn whole."""
    names = [f"m{i}" for i in range(16)]
    plots.accuracy_vs_time(frame(names=names), tmp_path, names)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = figs["acc_vs_time"]
    FigureCanvasAgg(fig).draw()  # closed by _save: laid out again at the figure's own dpi
    box, page = fig.axes[-1].get_legend().get_window_extent(), fig.bbox
    assert box.y0 >= page.y0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
    agg = frame().assign(mean=lambda d: d["mean"].where(d["name"] != "mgrq", 100.0))
    plots.accuracy_vs_bits(agg, MODELS, METHODS, tmp_path)
    plots.ablation_bars(agg, MODELS, ["mgrq_obwr", "mgrq"], tmp_path, order=METHODS)
    style = {c.get_label(): (to_hex(c.lines[0].get_color()), c.lines[0].get_marker())
             for c in figs["acc_vs_bits"].axes[0].containers}
    dots = {c.get_label(): (to_hex(c.lines[0].get_color()), c.lines[0].get_marker())
            for c in figs["ablation"].axes[0].containers}
    assert dots == {k: style[k] for k in ("MGRQ: OBWR only", "MGRQ")}, (dots, style)
    assert figs["ablation"].axes[0].get_ylim()[1] > 100.0


@pytest.mark.parametrize("width", [7.0, 5.5, 4.8, 4.4])
def test_acc_vs_time_with_three_models_keeps_its_labels_apart(tmp_path, figs, width):
    """Three models (the demo's and the ablation suite's zoo) and times over three decades, at a
    text width and at narrower ones (LNCS: 4.8 in): no two tick labels of a panel overlap, and
    the x labels lie on the figure apart (three panels side by side ran their labels together
    and cut the x labels off; two narrow panels cut their one-line labels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    models = ["tiny_vit", "tiny_deit", "tiny_swin"]
    rows = [{"source": "run", "model": m, "name": n, "bits": "W4A4", "n": 1, "mean": 80.0 + i, "std": float("nan"),
             "fp": 97.0, "quantize_s": 0.3 * 2.5 ** i * (1 + k), "device": "cpu"}
            for k, m in enumerate(models) for i, n in enumerate(METHODS)]
    with plots.figure_width(width):
        plots.accuracy_vs_time(pd.DataFrame(rows), tmp_path, METHODS, models)
    fig = figs["acc_vs_time"]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["tiny ViT", "tiny DeiT", "tiny Swin"]
    for ax in shown:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        assert len(boxes) >= 2, ax.get_title()
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), (ax.get_title(), [t.get_text() for t in ax.get_xticklabels()])
    labels = [ax.xaxis.label for ax in shown if ax.get_xlabel()]  # under the lowest panel of each column
    assert len(labels) == 2 and all(t.get_text().startswith("quantization time") for t in labels)
    boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0)
    assert all(fig.bbox.x0 <= b.x0 and b.x1 <= fig.bbox.x1 and fig.bbox.y0 <= b.y0 for b in boxes)
    assert not boxes[0].overlaps(boxes[1])


def test_column_width_figures_stack_their_panels_and_keep_everything_on_the_figure(tmp_path, figs):
    """--fig-width 3.5 (one column of a two-column paper): each figure is 3.5 in wide, so it is
    included at 100% with its 8 pt text; panels stack one a row, the legends go below the panels
    and stay on the figure (ablation-mgrq's 11 rows, three models)."""
    import yaml
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    names = yaml.safe_load((ROOT / "suites" / "ablation-mgrq.yaml").read_text())["methods"]
    models = ["tiny_vit", "tiny_deit", "tiny_swin"]
    rows = [{"source": "run", "model": m, "name": n, "bits": b, "n": 3, "mean": 80.0 + i + k - 5 * j, "std": 0.5,
             "fp": 97.0, "quantize_s": 0.3 * 1.9 ** i, "device": "cpu"}
            for k, m in enumerate(models) for i, n in enumerate(names) for j, b in enumerate(["W4A4", "W3A3"])]
    agg = pd.DataFrame(rows)
    with plots.figure_width(3.5):
        plots.accuracy_vs_bits(agg, models, names, tmp_path)
        plots.ablation_bars(agg, models, names[6:], tmp_path, order=names)
        plots.accuracy_vs_time(agg, tmp_path, names, models)
    assert plots._WIDTH.get() == plots.WIDTH  # the default again after the block
    for stem in ("acc_vs_bits", "ablation", "acc_vs_time"):
        fig = figs[stem]
        assert fig.get_size_inches()[0] == pytest.approx(3.5), stem
        renderer = FigureCanvasAgg(fig).get_renderer()
        fig.draw(renderer)
        shown = [ax for ax in fig.axes if ax.get_visible()]
        assert len({round(ax.get_position().x0, 3) for ax in shown}) == 1, stem  # one panel a row
        (legend,) = fig.legends  # below the panels, for acc_vs_time too
        page = fig.bbox
        for t in legend.get_texts():
            box = t.get_window_extent(renderer)
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0, (stem, t.get_text())
    assert len([ax for ax in figs["acc_vs_bits"].axes if ax.get_visible()]) == 3


def test_the_main_rows_keep_the_colour_blind_safe_palette_in_a_grid_of_eleven():
    """ablation-mgrq's 11 rows with report.main = the 6 baselines and MGRQ: those 7 take
    Okabe-Ito, MGRQ vermillion, however many variants the grid has besides; every row one style."""
    import yaml

    every = yaml.safe_load((ROOT / "suites" / "ablation-mgrq.yaml").read_text())["methods"]
    main = every[:6] + ["mgrq"]
    with plots.main_rows(main):
        styles = plots._styles(every)
    assert [styles[n]["color"] for n in main] == plots.OKABE_ITO[:6] + [plots.OKABE_ITO[-1]]
    others = [styles[n]["color"] for n in every if n not in main]
    assert len(set(map(str, others))) == 4 and not set(map(str, others)) & set(plots.OKABE_ITO)
    assert len({(str(s["color"]), s["marker"]) for s in styles.values()}) == len(every)
    assert plots._styles(every)["mgrq"]["color"] != plots.OKABE_ITO[-1]  # without main: tab20 for 11 rows
    with plots.main_rows(every[:9]):  # more main rows than Okabe-Ito has: the others go on in tab20
        colours = [str(s["color"]) for s in plots._styles(every).values()]
    assert len(set(colours)) == len(every), colours


def test_a_figure_taller_than_a_page_is_named(tmp_path):
    """Five models at --fig-width 3.5 stack five panels, 11.6 in: taller than a page's text, which
    the report's notes then say; at 7 in they are two rows."""
    models = [f"m{i}" for i in range(5)]
    rows = [{"source": "run", "model": m, "name": "percentile", "bits": "W4A4", "n": 1, "mean": 80.0,
             "std": float("nan"), "fp": 90.0, "quantize_s": 1.0, "device": "cpu"} for m in models]
    with plots.figure_width(3.5):
        narrow = plots.accuracy_vs_bits(pd.DataFrame(rows), models, ["percentile"], tmp_path)
    assert plots.too_tall(narrow) == [("acc_vs_bits", pytest.approx(11.6))]
    assert plots.too_tall(plots.accuracy_vs_bits(pd.DataFrame(rows), models, ["percentile"], tmp_path)) == []
