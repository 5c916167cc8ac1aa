"""Harness subcommands of ``mgrq``: ``suite run|list|status``, ``mirror``, ``report``.

Exit status of ``mgrq suite run``: 0 all cells done; 1 some cells failed or did not finish (the
summary lists them); 2 bad input (one line, nothing submitted); 3 the cells are fine but MLflow mirroring
failed (redo it later with ``mgrq mirror``); 130 interrupted (Ctrl-C; a rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mgrq.config import path_arg

EXIT_FAILED_CELLS = 1
EXIT_MIRROR = 3


def _add_out(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, type=path_arg,
                   help="runs folder (default ./runs, or $MGRQ_RUNS); holds the records and the default MLflow store")


def _out(args: argparse.Namespace) -> Path:
    from mgrq.runner.layout import default_out

    return Path(args.out) if args.out else default_out()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suite", help="run, list or inspect suites (grids of runs)")
    ssub = p.add_subparsers(dest="suite_command", required=True, metavar="SUITE_COMMAND")

    r = ssub.add_parser("run", help="run (or resume) a suite", description=(
        "Expand a suite into cells, skip the cells already done, run the rest with an executor, "
        "mirror the records into MLflow and write the report. Exit status: 0 all done, 1 some "
        "cells failed or did not finish (interrupted, cancelled), 2 bad input, 3 MLflow mirroring failed (records are safe), 130 interrupted "
        "(Ctrl-C; rerun the label to resume)."), epilog=(
        "A method's config fields (`mgrq methods NAME` lists them) are set in the suite file, on its "
        "entry, `methods: [{name: qdrop, config: {iters: 100}}]`, for every entry of a method, "
        "`overrides: {qdrop: {config: {iters: 100}}}`, or on a named variant, `{name: mgrq, variant: "
        "g0.1, config: {w_global: 0.1}}`. MGRQ's ablation variants (mgrq_obwr, ...) are methods of "
        "their own: `overrides.mgrq` does not reach them. File format: docs/harness.md."))
    r.add_argument("suite", help="suite name (see `mgrq suite list`) or path to a suite YAML file")
    _add_out(r)
    r.add_argument("--label", default=None, help="run label (default: YYYYMMDD-<git sha>); same label = resume; "
                                                  "not latest or previous, which report and status read as the "
                                                  "newest two")
    r.add_argument("--dry-run", action="store_true", help="print the grid and how many cells are done; run nothing")
    r.add_argument("--only", default=None, metavar="REGEX", help="run only the cells whose id matches REGEX")
    r.add_argument("--data-root", default=None, help="ImageNet-layout folder (wins over the suite's data.root)")
    r.add_argument("--checkpoint", action="append", metavar="MODEL=PATH",
                   help="local weights file for a model (repeatable; wins over the suite's checkpoints)")
    r.add_argument("--eval-limit", type=int, default=None,
                   help="evaluate on N images spread evenly over the eval set (smoke runs; default: the suite's eval_limit, "
                        "else every image; changes the cells' hashes)")
    r.add_argument("--calib", type=int, default=None,
                   help="calibration images for every method (smoke runs; default: the suite's; "
                        "changes the cells' hashes)")
    r.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                   help="a method config field for every method of the suite that has it, as if written in its "
                        "config: (repeatable; e.g. --set iters=200 for a smoke run of the reconstruction methods; "
                        "changes those cells' hashes; `mgrq methods NAME` lists a method's fields)")
    r.add_argument("--device", default=None,
                   help="device for the cells: auto (default: CUDA when the job sees a GPU), cpu, cuda; a site "
                        "profile's device: sets it too")
    g = r.add_argument_group("executor (suite executor: defaults < site profile < these flags)")
    g.add_argument("--executor", choices=("local", "debug", "slurm"), default=None,
                   help="local (default), debug (in-process) or slurm (job array)")
    g.add_argument("--profile", default=None,
                   help="site profile YAML/TOML with slurm/local options (default $MGRQ_SITE_PROFILE)")
    g.add_argument("--parallelism", type=int, default=None, help="local: jobs side by side (default min(4, cores))")
    g.add_argument("--threads", type=int, default=None, help="torch threads per job (default: on the CPU, local cores / --parallelism, however few cells "
                        "are left, and debug cores / min(4, cores); on GPUs, local cores / jobs started and debug all "
                        "cores; slurm, --cpus, else 1). On a CPU a reconstruction's result depends on the thread "
                        "count: a label resumed with another gets a note")
    g.add_argument("--timeout-min", type=int, default=None,
                   help="time limit per job, minutes (default: the suite's executor.timeout_min, else 720)")
    g.add_argument("--partition", default=None, help="slurm partition")
    g.add_argument("--account", default=None, help="slurm account")
    g.add_argument("--qos", default=None, help="slurm QoS")
    g.add_argument("--constraint", default=None, help="slurm constraint (e.g. a GPU type)")
    g.add_argument("--gpus", dest="gpus_per_node", type=int, default=None,
                   help="GPUs per job (slurm). local: 0 runs the jobs on the CPU; otherwise each local "
                        "job gets one of the visible GPUs (CUDA_VISIBLE_DEVICES) in turn")
    g.add_argument("--cpus", dest="cpus_per_task", type=int, default=None, help="slurm CPUs per job")
    g.add_argument("--mem-gb", type=float, default=None, help="slurm memory per job, GB")
    g.add_argument("--array-parallelism", type=int, default=None, help="slurm: array tasks at once (default 32)")
    g.add_argument("--cells-per-job", type=int, default=None, help="slurm: cells per array task (default 1)")
    g.add_argument("--slurm-setup", dest="setup", action="append", default=None,
                   metavar="LINE", help="shell line run before each slurm job (repeatable)")
    g.add_argument("--slurm-param", dest="additional", action="append", default=None,
                   metavar="KEY=VALUE", help="any other sbatch option, e.g. gres=gpu:a100:1 (repeatable)")
    g.add_argument("--pdb", action="store_true", help="debug executor: open pdb when a job crashes")
    r.add_argument("--no-mirror", action="store_true", help="do not mirror the records into MLflow")
    r.add_argument("--no-report", action="store_true", help="do not write tables and figures")
    r.add_argument("--no-pdf", action="store_true", help="do not compile the tables with pdflatex")
    r.set_defaults(func=cmd_suite_run)

    ls = ssub.add_parser("list", help="list the suite files (name first on each line)")
    ls.set_defaults(func=cmd_suite_list)

    st = ssub.add_parser("status", help="status of every cell of a suite run")
    st.add_argument("suite", help="suite name or suite YAML file")
    _add_out(st)
    st.add_argument("--label", default=None, help="label (default: the newest; 'latest' = the newest, 'previous' = "
                                                  "the one before)")
    st.set_defaults(func=cmd_suite_status)

    m = sub.add_parser("mirror", help="mirror finished run records into MLflow (idempotent)",
                       description="Mirror the finished run records under --out into MLflow. Exit status: 0, "
                                   "3 when the store cannot be reached or written (the records are untouched), "
                                   "2 on bad input.")
    _add_out(m)
    m.add_argument("--suite", default=None, help="only this suite (default: all under --out)")
    m.add_argument("--label", default=None, help="only this label")
    m.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI, else sqlite under --out")
    m.add_argument("--prune", action="store_true",
                   help="also delete the MLflow runs (in the --suite/--label scope) that this runs folder "
                        "mirrored and whose record is gone (a label or cell folder deleted); MLflow keeps "
                        "deleted runs restorable until `mlflow gc`. Runs mirrored from other runs folders "
                        "are left alone. With --prune, --suite and --label may name folders already deleted")
    m.set_defaults(func=cmd_mirror)

    rp = sub.add_parser("report", help="LaTeX/Markdown tables and figures of a suite run",
                        description="Tables and figures of one label of a suite, or with --compare "
                                    "the delta table between two labels (nightly runs).",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=REPORT_EPILOG)
    rp.add_argument("suite", help="suite name or suite YAML file (a file's report: block, e.g. edited names, "
                                  "wins over the one the label ran with; a name reports with the label's)")
    _add_out(rp)
    rp.add_argument("--label", default=None, help="label (default: the newest; 'previous' = the one before)")
    rp.add_argument("--from", dest="source", choices=("records", "mlflow"), default="records",
                    help="read the run records (default) or the MLflow store")
    rp.add_argument("--tracking-uri", default=None, help="with --from mlflow (default: as `mgrq mirror`)")
    rp.add_argument("--dest", default=None, type=path_arg, help="output folder (default <out>/<suite>/<label>/report)")
    rp.add_argument("--no-published", action="store_true", help="leave out the published reference rows")
    rp.add_argument("--published-csv", default=None, type=path_arg, help="published rows CSV (default reports/published.csv)")
    rp.add_argument("--no-pdf", action="store_true", help="do not compile the tables with pdflatex")
    rp.add_argument("--no-figures", action="store_true", help="do not draw the figures")
    rp.add_argument("--paper-captions", action="store_true",
                    help="captions without the suite and label they came from ('suite S (L)'), as a paper "
                         "prints them (each \\label still names the suite, or --tex-key)")
    rp.add_argument("--fig-width", type=float, default=None, metavar="INCHES",
                    help="the figures' width, to include them at 100%% with 8-9 pt text (default 7: a paper's "
                         "text width, \\textwidth; 3.5: one column of a two-column paper, \\columnwidth); "
                         "narrow figures stack their panels and put every legend below")
    rp.add_argument("--paired", metavar="METHOD", default=None,
                    help="also write the paired table: METHOD minus each other method, paired by seed, "
                         "with 95%% intervals (default: the suite's report.paired; 'none': no paired table)")
    rp.add_argument("--float", dest="float_env", action="append", default=None, metavar="[TABLE=]ENV",
                    help="the float of the .tex tables: table (default; a table wider than the column is "
                         "scaled down to it) or table* (spans both columns of a two-column paper). ENV sets "
                         "every table, TABLE=ENV one of them (main, ablation, paired, cost, setup; compare with "
                         "--compare) and wins over ENV; repeatable: --float paired='table*'")
    rp.add_argument("--tex-key", default=None, metavar="KEY",
                    help="the key of the tables' \\label{tab:KEY-main} (-ablation, ...; default: the suite's "
                         "name): two reports of one suite \\input into one paper need two keys")
    rp.add_argument("--compare", nargs=2, metavar=("LABEL_A", "LABEL_B"), default=None,
                    help="delta table from LABEL_A to LABEL_B ('latest', 'previous' allowed); LABEL_A may be a "
                         "report's results.csv (e.g. docs/results/SUITE/results.csv): the run's numbers against those, "
                         "cell by cell, with how many cells ran the same spec (hash)")
    rp.add_argument("--threshold", type=float, default=None,
                    help="with --compare: flag cells whose top-1 moved by more than this many points (default 1.0)")
    rp.add_argument("--strict", action="store_true", help="with --compare: exit 1 when a cell is flagged 'moved', 'newly failed', 'new warning', "
                         "'new, failed', 'interrupted' or 'missing' (in A, no result in B)")
    rp.set_defaults(func=cmd_report)


# --------------------------------------------------------------------------------------------


def _is_suite_file(arg: str) -> bool:
    """Whether a SUITE argument names a file (a path, or a ``.yaml``) rather than a suite name."""
    return Path(arg).suffix in (".yaml", ".yml") or "/" in arg


def _suite_name(arg: str) -> str:
    """A suite name, or the name of the suite file at a path (``suites/demo.yaml`` -> ``demo``)."""
    if _is_suite_file(arg):
        from mgrq.runner.suite import load_suite

        return load_suite(arg, check_names=False).name
    return arg


REPORT_EPILOG = """\
what it writes (default <out>/<suite>/<label>/report/):
  main, ablation, paired, cost, setup .tex (table floats to \\input; need \\usepackage{booktabs,graphicx};
  \\label{tab:SUITE-main}, -ablation, -paired, -cost, -setup; --tex-key KEY for another key)
  and .md; acc_vs_bits, ablation, acc_vs_time .pdf/.png (TrueType fonts; --fig-width wide, 7 in
  by default); results.csv; tables.tex/.pdf (pdflatex); notes.md/.tex when there is something to
  note. Means are over seeds, +- the sample std (n-1).
the suite file's report: block (or the label's suite.json):
  main: [rows]        rows of the main table and figures, in the grid's order (default: every row)
  ablation: [rows]    rows of the ablation table and figure (true: every row)
  paired: METHOD      reference of the paired table (METHOD minus each row, 95% intervals)
  names: {row: text}  a row's printed name
  caption: text       the main table's first sentence
for a paper: --paper-captions, --fig-width 3.5 for a column, --float 'table*' for wide tables
  (--float 'paired=table*' for one of them).
more: docs/harness.md, section Reports."""


FLAG_NAMES = {"parallelism": "--parallelism", "gpus_per_node": "--gpus", "timeout_min": "--timeout-min",
              "partition": "--partition", "account": "--account", "qos": "--qos", "constraint": "--constraint",
              "cpus_per_task": "--cpus", "mem_gb": "--mem-gb", "array_parallelism": "--array-parallelism",
              "cells_per_job": "--cells-per-job", "setup": "--slurm-setup", "additional": "--slurm-param"}


def _executor_options(args: argparse.Namespace, suite: Any):
    from mgrq.config import parse_assignments
    from mgrq.runner import executors as ex

    profile, profile_path = ex.load_profile(args.profile)
    kind = args.executor or "local"
    flags = {k: getattr(args, k) for k in ("parallelism", "threads", "timeout_min", "partition",
                                            "account", "qos", "constraint", "gpus_per_node",
                                            "cpus_per_task", "mem_gb", "array_parallelism",
                                            "cells_per_job")}
    flags["setup"] = tuple(args.setup) if args.setup else None
    flags["additional"] = parse_assignments(args.additional, "--slurm-param") if args.additional else None
    flags["device"] = args.device
    from mgrq.errors import ConfigError

    if args.pdb and kind != "debug":
        raise ConfigError(f"--pdb: opens pdb in this process, so it needs --executor debug (not {kind})")
    # flags another executor reads are an error, not silently ignored (a profile may set them: it
    # has a section per executor)
    unused = [flag for dest, flag in FLAG_NAMES.items() if dest in ex.UNUSED[kind] and flags.get(dest) is not None]
    if unused:
        hint = {"local": "--executor slurm", "debug": "--executor local or slurm",
                "slurm": "--array-parallelism"}[kind]
        raise ConfigError(f"{', '.join(unused)}: not used by the {kind} executor; expected {hint}, or no "
                          f"{' or '.join(unused)}")
    flags["pdb"] = args.pdb or None
    return ex.resolve_options(kind, dict(suite.executor), profile, flags,
                              f"site profile {profile_path}, section {kind}: " if profile_path else "",
                              f"{suite.path}: ")


def _check_local_cuda(opts: Any, dev: Any) -> None:
    """``--device cuda[:N]`` with an executor that runs the cells on this machine: a GPU the cells
    will see, or one ``ConfigError`` before anything runs (each cell failed with a traceback).
    A local job sees one GPU, as ``cuda:0`` (its own ``CUDA_VISIBLE_DEVICES``); debug sees them all."""
    from mgrq.errors import ConfigError
    from mgrq.runner import executors as ex

    n = ex.cuda_count()
    head = f"--device {opts.device}: the {opts.kind} executor runs the cells on this machine"
    if n == 0:
        raise ConfigError(f"{head}, which has no CUDA device; expected cpu or auto, or --executor slurm")
    if opts.kind == "debug":
        if dev.index is not None and dev.index >= n:
            raise ConfigError(f"{head}, which has {n} CUDA device(s); expected cuda:0 to cuda:{n - 1}")
        return
    if not ex.local_gpus(opts):
        raise ConfigError(f"{head}, and --gpus 0 gives its jobs no GPU; expected --device cpu, or --gpus left out")
    if dev.index not in (None, 0):
        raise ConfigError(f"{head}, and each local job sees one GPU, as cuda:0 (CUDA_VISIBLE_DEVICES); "
                          "expected --device cuda")


def cmd_suite_run(args: argparse.Namespace) -> int:
    from mgrq.config import parse_assignments
    from mgrq.errors import ConfigError, MGRQError
    from mgrq.records import check_writable
    from mgrq.runner import driver
    from mgrq.runner.layout import check_label, default_label
    from mgrq.runner.suite import load_suite

    out = _out(args) if args.dry_run else check_writable(_out(args), "--out", folder=True)  # dry runs write nothing
    suite = load_suite(args.suite).with_options(
        data_root=args.data_root, checkpoints=parse_assignments(args.checkpoint, "--checkpoint"),
        eval_limit=args.eval_limit, calib=args.calib, only=args.only,
        sets=parse_assignments(args.overrides, "--set"))
    for msg in suite.notes:
        print(f"note: {msg}", file=sys.stderr)
    if suite.data_root is not None and not suite.needs_data_root:
        given = "--data-root" if args.data_root is not None else f"{suite.path}: data.root"
        print(f"note: {given} is not used: every model of suite {suite.name}"
              + (" with a cell in its grid (its only:)" if suite.grid_models != suite.models else "")
              + " is from the tiny zoo (embedded MNIST digits)", file=sys.stderr)
    opts = _executor_options(args, suite)
    if opts.kind != "debug":  # jobs are other processes: they must find every method of the grid
        from mgrq.methods.registry import check_jobs_can_load

        check_jobs_can_load([m.method for m in suite.methods], f"{suite.path}: ")
    if opts.device not in (None, "auto"):
        from mgrq.evaluate import parse_device

        dev = parse_device(opts.device)  # a typo fails here, not in every cell (the GPU may be elsewhere)
        if dev.type == "cuda" and opts.kind in ("local", "debug"):  # the cells run on this machine
            _check_local_cuda(opts, dev)
    if note := _cpu_reconstruction_note(suite, opts, args.only):
        print(note, file=sys.stderr)
    label = check_label(args.label if args.label is not None else default_label())
    if not args.no_mirror:  # a store MLflow will refuse: say so now, not after the cells ran
        from mgrq.tracking import check_store_kind, default_uri

        try:
            check_store_kind(default_uri(out), probe=not args.dry_run)
        except MGRQError as e:
            raise ConfigError(f"{e} (or --no-mirror)") from None
    if args.dry_run:
        root, cells = driver.plan(suite, out, label, opts.device, args.only)
        driver.print_grid(suite, label, root, cells)
        from mgrq import records

        grid = driver.plan(suite, out, label, opts.device)[1] if args.only else cells
        if note := driver.other_grid_note(label, records.read_record(root / "suite.json") or {}, grid):
            print(note)
        pending = [c for c in cells if c.status() != "done"]
        if note := driver.threads_note(driver.done_records(driver.states(grid)), pending, opts):
            print(note)
        try:  # what the run would refuse
            check_writable(out, "--out", folder=True)
            driver.check_one_split(root, label, suite.eval_split)
            driver.check_no_live_slurm_tasks(root / "jobs", pending, suite.name)
        except ConfigError as e:
            print(f"note: the run would stop here: {e}")
        print(_executor_line(opts, len(pending)))
        if opts.kind == "slurm" and pending:  # the scheduler's view of the options, now rather than at 01:30
            import math

            from mgrq.runner import executors as ex

            tasks = math.ceil(len(pending) / opts.cells_per_job)
            try:
                said = ex.test_submission(opts, f"mgrq-{suite.name}", tasks)
            except FileNotFoundError:
                print("note: no sbatch here: the scheduler did not check the SLURM options")
            else:
                print(f"slurm: sbatch --test-only takes a {tasks}-task array with these options ({said})")
        return 0
    summary = driver.run_suite(suite, out, label, opts, only=args.only)
    print(summary.line(), flush=True)
    _print_failures(summary)

    code = summary.exit_code
    mirror_line, mirror_uri = None, None
    if not args.no_mirror:
        from mgrq.tracking import MirrorError, default_uri, mirror

        mirror_uri = default_uri(out)
        try:
            res = mirror(out, suite.name, label)
            mirror_line = f"{res.uri}, experiment '{suite.name}', tag label={label}: {res.counts()}"
        except MirrorError as e:
            print(f"warning: {e}", file=sys.stderr, flush=True)
            mirror_line = f"NOT mirrored: {e}"
            code = code or EXIT_MIRROR
    rep, no_report = None, None
    if not args.no_report and (summary.done + summary.skipped) == 0:
        no_report = "none written: no cell of the label has finished"
    elif not args.no_report:
        from reports.build import build_report

        try:
            rep = build_report(out, suite.name, label, pdf="no" if args.no_pdf else "auto")
        except Exception as e:  # the cells are done; a report problem must not hide that
            print(f"warning: report not written: {type(e).__name__}: {e}", file=sys.stderr)
            no_report = f"not written ({type(e).__name__}; see the warning above)"
    _final_summary(summary, rep, mirror_line, mirror_uri, no_report)
    return code


def _executor_line(opts: Any, n_pending: int) -> str:
    """A dry run's executor line: its options as a suite file writes them and how the pending
    cells would run (the jobs and threads the run itself prints when it starts)."""
    import yaml

    from mgrq.runner import executors as ex

    def shown(v: Any) -> str:  # setup: a list of lines, additional: a mapping, as in a suite file
        if isinstance(v, tuple):
            v = dict(v) if v and all(isinstance(x, tuple) for x in v) else list(v)
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip() if isinstance(v, list | dict) else str(v)

    said = ", ".join(f"{k}={shown(v)}" for k, v in opts.describe().items() if k != "kind")
    if not n_pending:
        how = "nothing to run"
    elif opts.kind == "local":
        jobs, threads = ex.local_plan(opts, n_pending, ex.runs_on_cpu(opts))
        how = ex.local_line(jobs, threads, ex.local_gpus(opts))
    elif opts.kind == "debug":
        how = f"one process, {ex.cell_threads(opts)} torch thread(s)"
    else:
        how = f"{opts.cells_per_job} cell(s) per task, {ex.slurm_threads(opts)} CPU thread(s) each"
    return f"executor: {opts.kind} ({said or 'defaults'}): {how}"


def _print_failures(summary: Any) -> None:
    from mgrq.records import read_record

    for rid in summary.failed:
        folder = summary.dirs[rid]  # not a glob on the id: an older folder of it (other options) may exist
        err = (read_record(folder / "record.json") or {}).get("error") or {}
        print(f"  failed: {rid}: {err.get('type', 'no record')}: {str(err.get('message', ''))[:200]}"
              f"  (log: {folder}/cell.log)")


def _final_summary(summary: Any, rep: Any, mirror_line: str | None, uri: str | None,
                   no_report: str | None = None) -> None:
    from mgrq.tracking import ui_command

    print()
    if rep is not None:
        print(rep.main_markdown)
    print(f"== {summary.suite} [{summary.label}] ==")
    print(f"cells:    {summary.total} total: {summary.done} done now, {summary.skipped} skipped "
          f"(done before), {len(summary.failed)} failed"
          + (f", {len(summary.not_run)} not run or interrupted (rerun the suite)" if summary.not_run else "")
          + f"; wall time {summary.seconds:.0f}s")
    if summary.warned:
        print(f"warnings: {len(summary.warned)} cell(s) done with warnings in their record "
              f"(a reconstructed unit's output error rose): {', '.join(summary.warned[:3])}"
              + (", ..." if len(summary.warned) > 3 else ""))
    print(f"records:  {summary.root}/<cell>/record.json")
    if no_report:
        print(f"report:   {no_report}")
    if rep is not None:
        def names(paths: list) -> str:
            return " ".join(p.name for p in paths)

        print(f"report:   {rep.dest}/")
        tables = [p for p in rep.tables if p.suffix in (".tex", ".md")]
        pdf = f" {rep.pdf.name} (compiled with pdflatex)" if rep.pdf else ""
        print(f"  tables  {names(tables)}{pdf}")
        if rep.pdf_note:
            print(f"          (no PDF: {rep.pdf_note})")
        print(f"  figures {names([p for p in rep.figures if p.suffix == '.png'])} (and .pdf)")
        print("  data    results.csv (one row per cell)")
        for note in rep.notes:
            print(f"  note    {note}")
    if mirror_line:
        print(f"MLflow:   {mirror_line}")
        if uri and not mirror_line.startswith("NOT"):
            then = "  (then http://127.0.0.1:5000)" if not uri.startswith("http") else ""
            print(f"          open the UI: {ui_command(uri)}{then}")


def cmd_suite_list(args: argparse.Namespace) -> int:
    from mgrq.errors import MGRQError
    from mgrq.runner.suite import list_suites, load_suite

    for path in list_suites():
        try:
            s = load_suite(path)
            n = len(s.specs())
            print(f"{s.name:22s} {n:4d} cells  {s.description}")
        except MGRQError as e:
            print(f"{path.stem:22s}    - cells  NOT RUNNABLE: {e}")
    return 0


def cmd_suite_status(args: argparse.Namespace) -> int:
    from mgrq.records import read_record, warnings_note
    from mgrq.runner.layout import Cell, grid_cells, resolve_label

    out, args.suite = _out(args), _suite_name(args.suite)
    label = resolve_label(out, args.suite, args.label)
    root = out.resolve() / args.suite / label
    meta = read_record(root / "suite.json") or {}
    counts: dict[str, int] = {}
    print(f"suite {args.suite} [{label}] -> {root}")
    cells = [(c["id"], c.get("hash", ""), c["dir"]) for c in grid_cells(meta) if isinstance(c.get("dir"), str)]
    if not cells:  # no grid to list: show the cell folders there are (the grid's cells not started are unknown)
        cells = [(d.name.rsplit("-", 1)[0], d.name.rsplit("-", 1)[-1], d.name) for d in sorted(root.iterdir())
                 if d.is_dir() and ((d / "record.json").exists() or (d / "cell.log").exists())]
        print(f"note: {root / 'suite.json'} is missing, unreadable or lists no cells; showing the {len(cells)} "
              "cell folder(s) found (cells never started are not known)")
    from mgrq.runner.driver import mark_stale

    shown = [Cell(rid, h, root / folder, {}).shown_state() for rid, h, folder in cells]
    statuses, stale = mark_stale(shown, root, args.suite, label)
    for (rid, _, _), (_, rec), st in zip(cells, shown, statuses):
        counts[st] = counts.get(st, 0) + 1
        m = rec.get("metrics") or {}
        top1 = f"top-1 {m['top1']:.2f}" if "top1" in m else ""
        jid = (rec.get("executor") or {}).get("job_id")
        job = f"job {jid}" if jid else ""
        print(f"  {st:11s} {rid:55s} {top1:14s} {job}  {warnings_note(rec)}".rstrip())
    print(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no cells")
    if stale:
        print(stale)
    return 0


PAPER_SCALE_ITERS = 1000  # a reconstruction of this many iterations per unit or more, on a CPU: hours per cell


def _cpu_reconstruction_note(suite: Any, opts: Any, only: str | None) -> str | None:
    """A note when cells that reconstruct an ImageNet model at full budget would run on this
    machine's CPU (local or debug executor, no CUDA device here, or ``--device cpu``): hours to
    days per cell, the user likely meant a GPU. None otherwise (tiny models, SLURM jobs, GPUs)."""
    if opts.kind not in ("local", "debug"):
        return None
    if opts.device not in (None, "auto", "cpu"):
        return None
    import torch

    if opts.device != "cpu" and torch.cuda.is_available():
        return None
    from mgrq import zoo
    from mgrq.methods import get_method
    from mgrq.runner.suite import select

    def iters(spec: Any) -> int:
        n = getattr(get_method(spec.method).make_config(dict(spec.method_config)), "iters", 0)
        return n if isinstance(n, int) and not isinstance(n, bool) else 0  # a method of one's own may differ

    heavy = [(s, n) for s in select(suite.specs(), only, suite.name)
             if not zoo.get_entry(s.model).tiny and (n := iters(s)) >= PAPER_SCALE_ITERS]
    if not heavy:
        return None
    most = max(n for _, n in heavy)
    where = "--device cpu" if opts.device == "cpu" else "no CUDA device here"
    return (f"note: {len(heavy)} cell(s) reconstruct an ImageNet model with up to {most:,} iterations per unit on "
            f"this machine's CPU ({where}), e.g. {heavy[0][0].run_id}: hours to days per cell; run them where a GPU "
            "is (--executor slurm with gpus_per_node), or give them a smaller budget in a suite file of your own "
            "(a method's config: iters)")


def cmd_mirror(args: argparse.Namespace) -> int:
    from mgrq.errors import unknown
    from mgrq.runner.layout import labels, suites_with_runs
    from mgrq.tracking import mirror

    out = _out(args)
    if not out.is_dir():
        from mgrq.errors import ConfigError

        raise ConfigError(f"--out {out}: folder not found (nothing to mirror)")
    suites = suites_with_runs(out)
    if args.suite is not None and args.suite not in suites and not args.prune:
        raise unknown("suite", args.suite, suites, f"under --out {out} (suites with runs)")
    if args.label is not None and not args.prune:
        known = sorted({lab for s in ([args.suite] if args.suite else suites) for lab in labels(out, s)})
        if args.label not in known:
            raise unknown("label", args.label, known, f"of {'suite ' + args.suite if args.suite else 'any suite'} "
                          f"under --out {out}")
    from mgrq.tracking import MirrorError

    try:
        res = mirror(out, args.suite, args.label, args.tracking_uri, prune=args.prune)
    except MirrorError as e:  # the store, not the input: as `suite run`'s mirror failure
        print(f"error: {e}", file=sys.stderr)
        return 3
    print(res.line())
    return 0


def _check_report_flags(args: argparse.Namespace) -> None:
    """Options that do nothing in the chosen mode are an error, not silently ignored."""
    from mgrq.errors import ConfigError

    if args.tracking_uri is not None and args.source != "mlflow":
        raise ConfigError("--tracking-uri: only used with --from mlflow (the records are read from --out); "
                          "expected --from mlflow, or no --tracking-uri")
    if args.compare:
        unused = [flag for flag, on in (("--label", args.label is not None), ("--paired", args.paired is not None),
                                        ("--no-figures", args.no_figures), ("--no-pdf", args.no_pdf),
                                        ("--fig-width", args.fig_width is not None),
                                        ("--paper-captions", args.paper_captions),
                                        ("--no-published", args.no_published),
                                        ("--published-csv", args.published_csv is not None)) if on]
        what = ("the comparison of two labels (it takes them from --compare; no figures, PDF, published rows, "
                "or captions of the one-label tables)")
    elif args.no_figures and args.fig_width is not None:
        unused, what = ["--fig-width"], "a report with --no-figures (it draws no figure)"
    else:
        unused = [flag for flag, on in (("--threshold", args.threshold is not None), ("--strict", args.strict)) if on]
        what = "a report of one label (they apply to --compare LABEL_A LABEL_B)"
    if unused:
        raise ConfigError(f"{', '.join(unused)}: not used by {what}; expected {'them' if len(unused) > 1 else 'it'} "
                          "left out")


def cmd_report(args: argparse.Namespace) -> int:
    from reports.build import build_compare, build_report

    suite_file = args.suite if _is_suite_file(args.suite) else None
    out, args.suite = _out(args), _suite_name(args.suite)
    _check_report_flags(args)
    floats = args.float_env or "table"
    if args.compare:
        threshold = 1.0 if args.threshold is None else args.threshold
        cmp, files, md = build_compare(out, args.suite, args.compare[0], args.compare[1],
                                       threshold, args.source, args.tracking_uri, args.dest, floats, suite_file,
                                       args.tex_key)
        print(md)
        print("written: " + ", ".join(str(f) for f in files))
        for note in cmp.attrs.get("notes", []):
            print(f"note: {note}")
        from reports.tables import ALERT_FLAGS

        flagged = int(cmp["flag"].isin(ALERT_FLAGS).sum())
        return 1 if (args.strict and flagged) else 0
    published: Any = False if args.no_published else (args.published_csv or True)
    rep = build_report(out, args.suite, args.label, args.source, args.dest, published,
                       "no" if args.no_pdf else "auto", args.tracking_uri, not args.no_figures, args.paired,
                       floats, suite_file, 7.0 if args.fig_width is None else args.fig_width,
                       not args.paper_captions, args.tex_key)
    print(rep.main_markdown)
    if rep.paired_markdown:
        print(rep.paired_markdown)
    for p in rep.tables + rep.figures + ([rep.pdf] if rep.pdf else []):
        print(f"written: {p}")
    for note in rep.notes + ([rep.pdf_note] if rep.pdf_note else []):
        print(f"note: {note}")
    return 0
