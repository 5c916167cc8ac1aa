"""Suites: declarative grid files (``suites/<name>.yaml``) validated into frozen run specs.

A suite is models x bit-widths x methods (with named variants) x seeds, plus calibration
settings, data location, per-method overrides and executor defaults::

    name: imagenet-w4a4
    description: the RepQ-ViT table at W4/A4
    command: nox -s suite-imagenet-w4a4 -- --data-root /path/to/imagenet
    models: [vit_small_patch16_224, deit_tiny_patch16_224]
    bits: [W4A4]
    methods:
      - percentile                                   # a registered method
      - {name: percentile, variant: percentile-minmax, config: {act_init: minmax}}
    seeds: [0]
    only: null                                       # a regex: the grid is the cells whose id it matches
    calibration: {n: 32}                             # null: each method's default
    data: {root: null, eval_split: heldout}          # --data-root wins
    checkpoints: {deit_tiny_patch16_224: /weights/deit_tiny.pth}
    overrides: {percentile: {calib: 64}}             # per method or variant name
    eval_limit: null
    executor: {timeout_min: 240, cpus_per_task: 8, gpus_per_node: 1}
    report: {ablation: [percentile, percentile-minmax]}   # also caption, paired, names, main

A malformed file raises :class:`~mgrq.errors.ConfigError` (or ``UnknownNameError``) naming the
file, the field and what was expected, before anything is submitted: one line, or with several
problems a line for each.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from mgrq.errors import (
    ConfigError,
    DataError,
    MGRQError,
    UnknownNameError,
    compile_regex,
    did_you_mean,
    unknown,
)
from mgrq.runner.executors import option_problem
from mgrq.spec import RunSpec, parse_bits

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TOP_FIELDS = (
    "name", "description", "command", "models", "bits", "methods", "seeds", "only", "calibration",
    "data", "checkpoints", "overrides", "eval_limit", "image_bits", "bits_overrides",
    "executor", "report",
)
METHOD_FIELDS = ("name", "variant", "config", "calib", "image_bits", "bits_overrides")
OVERRIDE_FIELDS = ("calib", "config", "image_bits", "bits_overrides")
EXECUTOR_FIELDS = (
    "parallelism", "threads", "timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb",
    "array_parallelism", "partition", "account", "qos", "constraint",
)
REPORT_FIELDS = ("ablation", "caption", "paired", "names", "main")


@dataclass(frozen=True)
class MethodEntry:
    """One row of the grid: a registered method, optionally a named variant with overrides."""

    method: str
    variant: str | None = None
    config: tuple[tuple[str, Any], ...] = ()
    calib: int | None = None
    image_bits: int | None = None
    bits_overrides: tuple[tuple[str, Any], ...] | None = None
    bits_overrides_at: str = field(default="bits_overrides", compare=False)  # where the suite file set it

    @property
    def name(self) -> str:
        return self.variant or self.method


@dataclass(frozen=True)
class Suite:
    """A validated suite file. ``specs()`` expands it into the grid of :class:`RunSpec`."""

    name: str
    path: Path
    description: str
    command: str
    models: tuple[str, ...]
    bits: tuple[tuple[int, int], ...]
    methods: tuple[MethodEntry, ...]
    seeds: tuple[int, ...] = (0,)
    only: str | None = None  # the file's ``only``: the grid is the cells whose id it matches (None: every cell)
    calib: int | None = None
    data_root: str | None = None
    eval_split: str = "heldout"
    checkpoints: tuple[tuple[str, str], ...] = ()
    eval_limit: int | None = None
    image_bits: int = 8
    bits_overrides: tuple[tuple[str, Any], ...] = ()
    executor: tuple[tuple[str, Any], ...] = ()
    ablation: tuple[str, ...] = ()  # rows of the ablation table (empty: no ablation table)
    main: tuple[str, ...] = ()  # rows of the main table and figures (empty: every row)
    paired: str | None = None  # reference method of the paired table (None: no paired table)
    caption: str | None = None
    row_names: tuple[tuple[str, str], ...] = ()  # report.names: a row (method or variant) -> its name in tables
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    notes: tuple[str, ...] = field(default=(), compare=False, repr=False)  # from with_options, to print

    @property
    def needs_data_root(self) -> bool:
        from mgrq.zoo import get_entry

        return any(not get_entry(m).tiny for m in self.grid_models)

    @property
    def grid_models(self) -> tuple[str, ...]:
        """The models with a cell in the grid, in file order: ``models``, less those ``only`` leaves
        without a cell."""
        return self.models if not self.only else tuple(m for m in self.models if m in self._in_grid[0])

    @property
    def grid_bits(self) -> tuple[tuple[int, int], ...]:
        """The bit-widths with a cell in the grid (as :attr:`grid_models`)."""
        return self.bits if not self.only else tuple(b for b in self.bits if b in self._in_grid[1])

    @property
    def grid_methods(self) -> tuple[str, ...]:
        """The rows (method or variant names) with a cell in the grid (as :attr:`grid_models`)."""
        return tuple(m.name for m in self.methods if not self.only or m.name in self._in_grid[2])

    @cached_property
    def _in_grid(self) -> tuple[set[str], set[tuple[int, int]], set[str]]:
        """The models, bit-widths ``(w, a)`` and row names of the grid's cells, from one expansion."""
        specs = self.specs()
        return {s.model for s in specs}, {(s.w_bits, s.a_bits) for s in specs}, {s.name for s in specs}

    def specs(self, device: str = "auto") -> list[RunSpec]:
        """The grid, ordered by model, bit-width, method (suite order) and seed; with the file's
        ``only``, the cells whose id it matches. Tiny-zoo cells get no data root (they use the
        embedded MNIST digits; it is not in their hash)."""
        ckpt = dict(self.checkpoints)
        out = []
        for model in self.models:
            for w, a in self.bits:
                for m in self.methods:
                    for seed in self.seeds:
                        out.append(RunSpec(
                            model=model, method=m.method, w_bits=w, a_bits=a, seed=seed,
                            calib=m.calib if m.calib is not None else self.calib,
                            method_config=m.config, variant=m.variant,
                            image_bits=m.image_bits if m.image_bits is not None else self.image_bits,
                            bits_overrides=(m.bits_overrides if m.bits_overrides is not None
                                            else self.bits_overrides),
                            checkpoint=ckpt.get(model), data_root=None if _is_tiny(model) else self.data_root,
                            eval_split=self.eval_split, eval_limit=self.eval_limit, device=device,
                        ))
        return [s for s in out if re.search(self.only, s.run_id)] if self.only else out

    def with_options(
        self,
        data_root: str | None = None,
        checkpoints: Mapping[str, str] | None = None,
        eval_limit: int | None = None,
        calib: int | None = None,
        only: str | None = None,
        sets: Mapping[str, str] | None = None,
    ) -> Suite:
        """A copy with command-line settings applied (they win over the file) and data/weights
        paths made absolute, then checked: a missing data root for an ImageNet model, class
        folders that do not fit a model's head, or a missing weights file fail here, before
        anything is submitted. ``only`` (``--only``): the class folders are checked for the
        models of the cells it selects. ``sets`` (``--set FIELD=VALUE``): config values for every
        method entry whose method has the field, as if written in its ``config:``."""
        where = str(self.path)
        set_by: dict[str, dict[str, str]] = {}  # entry -> the fields --set gave it: later errors name the flag

        def given(row: str, fld: str) -> str:
            """Who gave ``row`` its ``fld``, for an error: ``--set FIELD=VALUE`` or the suite file."""
            by_flag = set_by.get(row, {})
            return f"--set {fld}={by_flag[fld]}: method {row}" if fld in by_flag else f"{where}: method {row}"

        if sets:
            rows = {s.name for s in select(self.specs(), only, self.name)}
            methods, notes, set_by = _set_entries(self.methods, sets, rows,
                                                  "the cells --only selects" if only else "the suite")
            self = replace(self, methods=methods, notes=tuple(notes))
        root = data_root if data_root is not None else self.data_root
        ck = dict(self.checkpoints)
        for model, path in (checkpoints or {}).items():
            if model not in self.models:
                raise ConfigError(f"--checkpoint {model}=...: model not in suite {self.name} "
                                  f"({', '.join(self.models)})")
            ck[model] = path
        ck = {m: str(Path(p).expanduser().resolve()) for m, p in ck.items()}
        src = {m: f"--checkpoint {m}=..." if m in (checkpoints or {}) else f"{where}: checkpoints.{m}" for m in ck}
        for m, p in ck.items():
            if not Path(p).is_file():
                raise DataError(f"{src[m]}: weights file {p} not found")
        from mgrq.zoo import check_all_pretrained_cached, check_checkpoint, num_classes

        classes: dict[str, int] = {}  # of the models with a checkpoint: its own head
        if ck:
            from mgrq.errors import CheckpointError

            for m, p in ck.items():  # read once here, not found unfit by every cell of the grid
                try:
                    classes[m] = check_checkpoint(m, p)
                except CheckpointError as e:
                    raise CheckpointError(f"{src[m]}: {e}") from None
        if root is not None:
            root = str(Path(root).expanduser().resolve())
        if self.needs_data_root:
            from mgrq.data import IMAGENET_LAYOUT, check_class_images, check_imagenet_root

            first = next(m for m in self.grid_models if not _is_tiny(m))
            if root is None:
                raise ConfigError(
                    f"{where}: data.root: model {first} needs an ImageNet-layout folder; "
                    f"pass --data-root PATH or set data.root ({IMAGENET_LAYOUT}); --dry-run needs it "
                    "too, the data root is part of every cell's hash"
                )
            chosen = [s for s in select(self.specs(), only, self.name) if not _is_tiny(s.model)]  # cells to run
            run = {s.model for s in chosen}
            at = "--data-root: " if data_root is not None else f"{where}: data.root: "  # who gave the root
            for m in (m for m in self.models if not _is_tiny(m) and m in run):  # class folders against each head
                check_imagenet_root(root, m, at, classes[m] if m in classes else num_classes(m), self.eval_split)
            # the hub weights, offline: else every job of the model fails on them; all missing named at once
            check_all_pretrained_cached([m for m in self.models if not _is_tiny(m) and m in run and m not in ck],
                                        f"{where}: ")
            if chosen:
                from mgrq.methods.registry import run_calib

                sizes = [(calib, "--calib")] if calib is not None else [  # --calib: every method's, for this run
                    (run_calib(s), f"method {s.name}") for s in chosen]
                check_class_images(root, at, tune=self.eval_split == "tune", calib=max(sizes))
        from mgrq.zoo import check_overrides, check_units

        for what, bo in [("bits_overrides", self.bits_overrides)] + [
                (m.bits_overrides_at, m.bits_overrides) for m in self.methods if m.bits_overrides]:
            check_overrides(bo, list(self.models), f"{where}: {what}")
        for entry in self.methods:  # a reconstruction method's unit pattern, against each model it runs on
            check_units(dict(entry.config).get("units"), list(self.models), given(entry.name, "units"))
        for flag, v in (("--eval-limit", eval_limit), ("--calib", calib)):
            if v is not None and v < 1:
                raise ConfigError(f"{flag} {v}: expected a positive integer")
        methods = self.methods
        if calib is not None:  # a smoke-run override for every method
            methods = tuple(replace(m, calib=calib) for m in self.methods)
        out = replace(
            self, data_root=root, checkpoints=tuple(sorted(ck.items())), methods=methods,
            calib=calib if calib is not None else self.calib,
            eval_limit=eval_limit if eval_limit is not None else self.eval_limit,
        )
        from mgrq.data import mnist_split_indices
        from mgrq.methods.registry import check_init_calib, run_calib

        pool = len(mnist_split_indices()["train" if self.eval_split == "heldout" else "fit"])
        for spec in {(sp.name, _is_tiny(sp.model)): sp for sp in out.specs()}.values():  # per method entry
            at = f"{given(spec.name, 'init_calib')}: " + ("(with --calib) " if calib is not None else "")
            check_init_calib(spec, at)
            n = run_calib(spec)
            if _is_tiny(spec.model) and n > pool:  # (an ImageNet train/ folder: check_class_images above)
                split = "training digits" if self.eval_split == "heldout" else "training digits outside the tune split"
                raise ConfigError(f"{at}calib={n}: more than the {pool} {split} calibration draws from "
                                  f"(tiny zoo); expected at most {pool}")
        return out


def config_fields(cfg: Mapping[str, Any], built: Any) -> tuple[tuple[str, Any], ...]:
    """A method entry's config as the grid holds it (sorted ``(field, value)`` pairs) from the
    values as written (``cfg``) and the config they build (``built``; None: kept as written).
    A string for a field of another type (YAML reads `1e-3` as the string '1e-3') is kept as the
    value it was parsed to, so the cell's hash is that of `0.001` written as a number. Numbers
    stay as written (a float field's `1` is hashed as 1): cells of earlier runs keep their folders."""
    if built is not None:
        cfg = {k: getattr(built, k) if isinstance(x, str) and not isinstance(getattr(built, k), str) else x
               for k, x in cfg.items()}
    return tuple(sorted((str(k), tuple(x) if isinstance(x, list) else x) for k, x in cfg.items()))


def _set_entries(methods: tuple[MethodEntry, ...], sets: Mapping[str, str], selected: Collection[str],
                 scope: str) -> tuple[tuple[MethodEntry, ...], list[str], dict[str, dict[str, str]]]:
    """``methods`` with the ``--set`` values (strings, read as YAML reads a suite file's values)
    in the config of each entry of ``selected`` (the rows with cells this run selects) whose
    method has the field, the notes to print, and per entry the fields set (for the errors of
    later checks). An entry whose method fixes the field (an MGRQ variant's switched-off part)
    keeps its value, with a note; a value an entry's own ``config:`` gave is replaced, with a
    note. ``ConfigError`` for a value that is no YAML, a field no selected method has, or a
    value a method refuses."""
    import dataclasses

    from mgrq.methods import get_method

    cls = {m.method: get_method(m.method).config_cls for m in methods}
    has = {name: {f.name for f in dataclasses.fields(c)} for name, c in cls.items()}
    values: dict[str, Any] = {}
    for k, v in sets.items():
        try:
            values[k] = yaml.safe_load(v) if v else v  # as if written in the file
        except yaml.YAMLError as e:
            why = str(e).splitlines()[0]
            raise ConfigError(f"--set {k}={v}: not a value a suite file could hold ({why}); expected a value "
                              f"as written in a method's config:, a string quoted (--set \"{k}='{v}'\")") from None
    chosen = [m for m in methods if m.name in selected]
    for k, v in sets.items():
        if not any(k in has[m.method] for m in chosen):
            known = sorted(set().union(*(has[m.method] for m in chosen)))
            names = ", ".join(dict.fromkeys(m.method for m in chosen))
            if k == "calib":  # a run setting, not a config field
                raise ConfigError(f"--set calib={v}: calib is not a method config field; expected --calib {v} "
                                  "(calibration images for every method)")
            raise ConfigError(f"--set {k}={v}: no method of {scope} ({names}) has a field {k!r}"
                              f"{did_you_mean(k, known)}; expected one of their fields (`mgrq methods NAME` lists them)")
    notes: list[str] = []
    replaced: list[str] = []  # "row (field=its value)": what --set overrides in an entry's own config:
    set_by: dict[str, dict[str, str]] = {}
    out = []
    for m in methods:
        if m.name not in selected:
            out.append(m)
            continue
        fixed = getattr(cls[m.method], "FIXED", {})
        mine = {k: v for k, v in sets.items() if k in has[m.method] and k not in fixed}
        notes += [f"--set {k}={v} leaves {m.name} as it is (it fixes {k}={fixed[k]!r})"
                  for k, v in sets.items() if k in fixed]
        if not mine:
            out.append(m)
            continue
        own = dict(m.config)
        gone = [f"{k}={own[k]!r}" for k in mine if k in own and own[k] != values[k]]
        if gone:
            replaced.append(f"{m.name} ({', '.join(gone)})")
        cfg = {**own, **{k: values[k] for k in mine}}
        try:
            built = get_method(m.method).make_config(cfg)
        except MGRQError as e:
            given = " ".join(f"--set {k}={v}" for k, v in mine.items())
            odd = [k for k in mine if not isinstance(values[k], (str, int, float)) or isinstance(values[k], bool)]
            hint = (f" (--set reads {', '.join(odd)} as a suite file's config: would, as "
                    f"{', '.join(type(values[k]).__name__ for k in odd)}; a string is quoted: "
                    f"--set \"{odd[0]}='{mine[odd[0]]}'\")") if odd else ""
            raise ConfigError(f"{given}: " + (f"variant {m.variant}: " if m.variant else "") + str(e) + hint) from None
        out.append(replace(m, config=config_fields(cfg, built)))
        set_by[m.name] = mine
    if replaced:
        notes.append(f"--set replaces values the suite file gives these rows: {', '.join(replaced)}")
    same: dict[tuple, list[str]] = {}
    for m in out:
        if m.name in selected:
            same.setdefault((m.method, m.config, m.calib, m.image_bits, m.bits_overrides), []).append(m.name)
    for rows in same.values():
        if len(rows) > 1 and any(r in set_by for r in rows):
            notes.append(f"with --set, rows {', '.join(rows)} run the same settings (their cells differ by name only)")
    return tuple(out), notes, set_by


def select(specs: list[RunSpec], only: str | None, suite: str) -> list[RunSpec]:
    """The cells ``--only`` selects (a regex searched in the run ids; all of them without it).
    ``ConfigError`` when it is not a valid regex or selects none of suite ``suite``'s cells."""
    if not only:
        return specs
    pat = compile_regex(only, "--only", "a regex searched in the cell ids, e.g. '^tiny_vit\\.'")
    out = [s for s in specs if pat.search(s.run_id)]
    if not out:
        raise ConfigError(f"--only '{only}': matches none of the {len(specs)} cells of {suite}")
    return out


def _is_tiny(model: str) -> bool:
    from mgrq.zoo import get_entry

    return get_entry(model).tiny


# --------------------------------------------------------------------------------------------
# Finding and loading suite files
# --------------------------------------------------------------------------------------------


def suite_dirs() -> list[Path]:
    """Where suite names are looked up: ``./suites`` then the source tree's ``suites/``."""
    here = Path.cwd() / "suites"
    src = Path(__file__).resolve().parents[2] / "suites"
    return [d for i, d in enumerate((here, src)) if d.is_dir() and d not in (here, src)[:i]]


def find_suite(name_or_path: str) -> Path:
    """A suite file from a path (``suites/demo.yaml``) or a name (``demo``; a folder of that name
    in the working directory does not hide the suite)."""
    p = Path(name_or_path).expanduser()
    known = {f.stem: f for f in list_suites()}
    if p.is_dir() and name_or_path not in known:
        raise ConfigError(f"suite file {p}: is a folder; expected a suite YAML file or a suite name "
                          f"({', '.join(known) or 'none found'})")
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"suite file {p}: not found")
        return p
    if name_or_path not in known:
        raise unknown("suite", name_or_path, known)
    return known[name_or_path]


def list_suites() -> list[Path]:
    seen: dict[str, Path] = {}
    for d in suite_dirs():
        for f in sorted(d.glob("*.yaml")):
            seen.setdefault(f.stem, f)
    return [seen[k] for k in sorted(seen)]


class UniqueKeyLoader(yaml.SafeLoader):
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last).
    The composed document is checked before anything is built: merge keys (``<<``) rewrite the
    mappings they merge in place while those are built, which a check during building would
    take for repeated keys."""

    def construct_document(self, node: Any) -> Any:
        seen: set[int] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if id(n) in seen:  # an alias: the same node again
                continue
            seen.add(id(n))
            if isinstance(n, yaml.SequenceNode):
                stack += n.value
            elif isinstance(n, yaml.MappingNode):
                keys: set[tuple[str, str]] = set()
                for k, v in n.value:
                    if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                        if (k.tag, k.value) in keys:
                            raise ConfigError(f"line {k.start_mark.line + 1}: key {k.value!r} appears twice; "
                                              "expected each key once")
                        keys.add((k.tag, k.value))
                    stack += [k, v]
        return super().construct_document(node)


def read_yaml(path: Path, where: str = "") -> Any:
    """The YAML document in ``path`` (read with :class:`UniqueKeyLoader`); a syntax error or a key
    given twice raises ``ConfigError`` naming ``where`` (default: the path) and the line."""
    where = where or str(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte {e.object[e.start]:#04x} at position {e.start}); "
                          "expected a UTF-8 YAML file") from None
    except OSError as e:  # unreadable (permissions), or a folder
        raise ConfigError(f"{where}: cannot be read ({e.strerror or e}); expected a readable YAML file") from None
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None


def _names_written(methods_in: Any) -> set[str] | None:
    """The method and variant names a ``methods`` list names, each entry as written (valid or
    not); None when the list itself is not one to read names from."""
    if isinstance(methods_in, str):
        methods_in = [methods_in]
    if not isinstance(methods_in, list):
        return None
    out: set[str] = set()
    for v in methods_in:
        if isinstance(v, str):
            out.add(v)
        elif isinstance(v, dict):
            out |= {x for x in (v.get("name"), v.get("variant")) if isinstance(x, str)}
    return out


def load_suite(name_or_path: str | Path, check_names: bool = True) -> Suite:
    """Read and validate a suite file. ``check_names=False`` skips the model/method registry
    checks (used to list suites whose methods are not registered yet)."""
    path = find_suite(str(name_or_path))
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of suite fields ({', '.join(TOP_FIELDS)})")
    return _Parser(path, check_names).suite(doc)


class _Noted(MGRQError):
    """A part failed and its problems are already kept (:meth:`_Parser.part`)."""


class _Parser:
    def __init__(self, path: Path, check_names: bool):
        self.path, self.check_names = path, check_names
        self.problems: list[MGRQError] = []  # what :meth:`part` kept, for :meth:`failed`

    def err(self, fld: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: field '{fld}': {msg}")

    def keys(self, d: Any, fld: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.err(fld, f"expected a mapping with keys from {', '.join(allowed)}, got {d!r}")
        bad = [k for k in d if k not in allowed]
        if bad:
            where = f"{fld}.{bad[0]}" if fld else str(bad[0])
            raise self.err(where, f"unknown field{did_you_mean(bad[0], allowed)}; expected one of {', '.join(allowed)}")
        return d

    def member(self, kind: str, name: Any, known: Collection[str], fld: str) -> None:
        """``name`` is one of the suite's own ``known`` models or methods/variants."""
        if name not in known:
            raise self.err(fld, str(unknown(kind, str(name), known, "of this suite")))

    def mapping(self, v: Any, fld: str) -> None:
        """``v`` is absent or a mapping (a method's config fields)."""
        if v is not None and not isinstance(v, dict):
            raise self.err(fld, f"expected a mapping of config fields (field: value), got {v!r}")

    def nonempty_list(self, d: dict, fld: str, expected: str) -> list[Any]:
        """``d[fld]`` as a list (one string given alone is a list of it), not empty: else an error
        saying it expected a non-empty list of ``expected``."""
        v = d.get(fld)
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not v:
            raise self.err(fld, f"expected a non-empty list of {expected}, got {v!r}")
        return v

    def str_list(self, d: dict, fld: str, required: bool = True) -> list[str]:
        if d.get(fld) is None and not required:
            return []
        v = self.nonempty_list(d, fld, "names")
        if not all(isinstance(x, str) and x for x in v):
            raise self.err(fld, f"expected a non-empty list of names, got {v!r}")
        return v

    def opt_int(self, v: Any, fld: str, lo: int = 1, hi: int | None = None) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise self.err(fld, f"expected an integer {rng} or null, got {v!r}")
        return v

    def name_check(self, kind: str, name: str, fld: str) -> None:
        if not self.check_names:
            return
        from mgrq.methods import get_method
        from mgrq.zoo import get_entry

        try:
            (get_method if kind == "method" else get_entry)(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{self.path}: field '{fld}': {e}") from None

    def bits_overrides(self, v: Any, fld: str) -> tuple[tuple[str, Any], ...]:
        if v is None:
            return ()
        if not isinstance(v, dict):
            raise self.err(fld, f"expected a mapping REGEX: BITS|fp, got {v!r}")
        out = []
        for k, b in v.items():
            try:
                compile_regex(str(k), "layer pattern", "a regex searched in layer names")
            except ConfigError as e:
                raise self.err(f"{fld}.{k}", str(e)) from None
            if b != "fp" and (isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16):
                raise self.err(f"{fld}.{k}", f"expected a bit-width 2..16 or 'fp', got {b!r}")
            out.append((str(k), b))
        return tuple(out)

    def check_config(self, method: str, cfg: dict[str, Any], fld: str) -> Any:
        """The config ``method`` builds from ``cfg`` (None when names are not checked)."""
        if not self.check_names:
            return None
        from mgrq.methods import get_method

        try:
            return get_method(method).make_config(cfg)
        except MGRQError as e:
            raise self.err(fld, str(e)) from None

    def config(self, method: str, layers: list[tuple[str, Any]]) -> tuple[tuple[str, Any], ...]:
        """The config fields of ``layers`` (where, mapping or None; later ones win), checked. The
        errors name each layer that fails on its own, else the last (only together they fail)."""
        for where, c in layers:
            self.mapping(c, where)
        cfg = {k: x for _, c in layers for k, x in (c or {}).items()}
        try:
            built = self.check_config(method, cfg, layers[-1][0])
        except ConfigError:
            n = len(self.problems)
            for where, c in layers:
                with self.part():
                    self.check_config(method, c or {}, where)
            if len(self.problems) > n:
                raise _Noted() from None
            raise
        return config_fields(cfg, built)

    def method(self, i: int, v: Any, overrides: dict[str, Any]) -> MethodEntry:
        fld = f"methods[{i}]"
        if isinstance(v, str):
            v = {"name": v}
        v = self.keys(v, fld, METHOD_FIELDS)
        name = v.get("name")
        if not isinstance(name, str) or not name:
            raise self.err(f"{fld}.name", f"expected a method name, got {name!r}")
        self.name_check("method", name, f"{fld}.name")
        variant = v.get("variant")
        if variant is not None and (not isinstance(variant, str) or not NAME_RE.match(variant)):
            raise self.err(f"{fld}.variant", f"expected a name of letters, digits, '.', '_', '-', got {variant!r}")
        if variant is not None and variant != name and self.check_names:
            from mgrq.methods import all_methods

            if variant in {m.name for m in all_methods()}:  # its cells, tables and MLflow runs would read as that method
                raise self.err(f"{fld}.variant", f"{variant!r} is the name of another method; expected a name of "
                               f"its own for this {name} variant (e.g. {name}-{variant})")
        # Per-method overrides (by method name, then by variant name) under the entry's own; a
        # bad value is named where it was written.
        layers = [(f"overrides.{k}", self.keys(overrides[k], f"overrides.{k}", OVERRIDE_FIELDS))
                  for k in dict.fromkeys((name, variant or name)) if overrides.get(k) is not None]
        layers.append((fld, v))
        merged = {k: x for _, o in layers for k, x in o.items()}
        at = {k: f"{where}.{k}" for where, o in layers for k in o}
        bo = merged.get("bits_overrides")
        return MethodEntry(
            method=name,
            variant=variant,
            config=self.config(name, [(f"{where}.config", o.get("config")) for where, o in layers]),
            calib=self.opt_int(merged.get("calib"), at.get("calib", "")),
            image_bits=self.opt_int(merged.get("image_bits"), at.get("image_bits", ""), 2, 16),
            bits_overrides=self.bits_overrides(bo, at["bits_overrides"]) if bo is not None else None,
            bits_overrides_at=at.get("bits_overrides", "bits_overrides"),
        )

    @contextmanager
    def part(self) -> Iterator[None]:
        """Check one part of the file: its error is kept, and the next part is checked."""
        try:
            yield
        except _Noted:
            pass
        except MGRQError as e:
            self.problems.append(e)

    def failed(self) -> MGRQError:
        """The file's one error as it was raised, or all of them in one error, a line each (an
        ``overrides`` block that a method and its variant share is checked for each: once here)."""
        lead = f"{self.path}: "
        lines = list(dict.fromkeys(str(e).removeprefix(lead) for e in self.problems))
        if len(lines) == 1:
            return self.problems[0]
        return ConfigError(f"{self.path}: {len(lines)} problems:\n" + "\n".join(f"  {ln}" for ln in lines))

    def suite(self, d: dict[str, Any]) -> Suite:
        """The suite of the file's fields ``d``. Every field is checked before an error is raised,
        so that it names every problem found; a field that depends on another one that is wrong
        (``report.ablation`` on ``methods``) is checked once the other one is right."""
        self.problems = []
        for k in [k for k in d if k not in TOP_FIELDS]:
            with self.part():
                raise self.err(str(k), f"unknown field{did_you_mean(k, TOP_FIELDS)}; expected one of "
                               f"{', '.join(TOP_FIELDS)}")
        d = {k: v for k, v in d.items() if k in TOP_FIELDS}
        name = d.get("name", self.path.stem)
        with self.part():
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise self.err("name", f"expected a name of letters, digits, '.', '_', '-', got {name!r}")
        with self.part():
            if not isinstance(d.get("description"), str) or not d["description"].strip():
                raise self.err("description", "expected a non-empty string (one line, shown by `mgrq suite list`)")
        if "command" not in d or d["command"] is None:  # documentation: how the suite is meant to be run
            d = {**d, "command": f"mgrq suite run {self.path}"}
        with self.part():
            if not isinstance(d["command"], str) or not d["command"].strip():
                raise self.err("command", "expected a non-empty string, or the field left out")
        n0 = len(self.problems)
        models: list[str] = []
        with self.part():
            models = self.str_list(d, "models")
        for i, m in enumerate(models):
            with self.part():
                self.name_check("model", m, f"models[{i}]")
                if m in models[:i]:
                    raise self.err(f"models[{i}]", f"{m!r} listed twice; expected each model once")
        models_ok = len(self.problems) == n0
        bits: list[tuple[int, int]] = []
        with self.part():
            for i, b in enumerate(self.nonempty_list(d, "bits", "WxAy strings")):
                with self.part():
                    try:
                        wa = parse_bits(str(b))
                    except ConfigError as e:
                        raise self.err(f"bits[{i}]", str(e)) from None
                    if wa in bits:
                        raise self.err(f"bits[{i}]", f"{b!r} is bits[{bits.index(wa)}] again; expected each "
                                       "bit-width once")
                    bits.append(wa)
        overrides = d.get("overrides") or {}
        with self.part():
            if not isinstance(overrides, dict):
                overrides = {}
                raise self.err("overrides", f"expected a mapping METHOD: {{{', '.join(OVERRIDE_FIELDS)}}}")
        good: dict[str, Any] = {}  # each block's known fields (an unknown one is named): the entries use them
        for k, o in overrides.items():
            if isinstance(o, dict):
                good[k] = {f: x for f, x in o.items() if f in OVERRIDE_FIELDS}
            if o is not None:
                with self.part():
                    self.keys(o, f"overrides.{k}", OVERRIDE_FIELDS)
        n0 = len(self.problems)
        methods: list[MethodEntry] = []
        with self.part():
            for i, m in enumerate(self.nonempty_list(d, "methods", "method names or mappings")):
                with self.part():
                    methods.append(self.method(i, m, good))
        names = [m.name for m in methods]
        with self.part():
            dup = next((n for n in names if names.count(n) > 1), None)
            if dup:
                raise self.err("methods", f"{dup!r} listed twice; give one of them a distinct 'variant' name")
        methods_ok = len(self.problems) == n0  # the fields naming methods are checked against a full list
        written = _names_written(d.get("methods"))  # as written, also in entries that failed
        if written is not None:
            registered: set[str] = set()
            if not methods_ok and self.check_names:  # a misspelt entry's override is not the mistake
                from mgrq.methods import all_methods

                registered = {m.name for m in all_methods()}
            for k in overrides:
                if k not in registered:
                    with self.part():
                        self.member("method", k, written, f"overrides.{k}")
        only = d.get("only")
        with self.part():
            if only is not None:
                expected = ("a regex searched in the cell ids (MODEL.METHOD.WxAy.sSEED), e.g. '^tiny_vit\\.'; the "
                            "grid is the cells it matches")
                if not isinstance(only, str) or not only.strip():
                    only = None
                    raise self.err("only", f"expected {expected}, or the field left out")
                try:
                    compile_regex(only, "only", expected)
                except ConfigError as e:
                    only = None
                    raise self.err("only", str(e)) from None
        seeds = d.get("seeds", [0])
        if isinstance(seeds, int):
            seeds = [seeds]
        with self.part():
            if (not isinstance(seeds, list) or not seeds
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
                    or len(set(seeds)) != len(seeds)):
                raise self.err("seeds", f"expected a list of distinct non-negative integers, got {seeds!r}")
        calib = None
        with self.part():
            calib = self.opt_int(self.keys(d.get("calibration") or {}, "calibration", ("n",)).get("n"),
                                 "calibration.n")
        data: dict[str, Any] = {}
        with self.part():
            data = self.keys(d.get("data") or {}, "data", ("root", "eval_split"))
        root = data.get("root")
        with self.part():
            if root is not None and not isinstance(root, str):
                raise self.err("data.root", f"expected a folder path or null, got {root!r}")
        eval_split = data.get("eval_split", "heldout")
        with self.part():
            if eval_split not in ("heldout", "tune"):
                raise self.err("data.eval_split", f"expected 'heldout' or 'tune', got {eval_split!r}")
        ck = d.get("checkpoints") or {}
        with self.part():
            if not isinstance(ck, dict) or not all(isinstance(v, str) for v in ck.values()):
                ck = {}
                raise self.err("checkpoints", "expected a mapping MODEL: PATH of weights files")
        if models_ok:
            for m in ck:
                with self.part():
                    self.member("model", m, models, f"checkpoints.{m}")
        ex: dict[str, Any] = {}
        with self.part():
            ex = self.keys(d.get("executor") or {}, "executor", EXECUTOR_FIELDS)
        for k, v in ex.items():  # the values any executor refuses; slurm's own limits when it is chosen
            with self.part():
                if why := option_problem(k, v):
                    raise self.err(f"executor.{k}", f"expected {why}, got {v!r}")
        rep: dict[str, Any] = {}
        with self.part():
            rep = self.keys(d.get("report") or {}, "report", REPORT_FIELDS)
        ablation = rep.get("ablation", False)
        if ablation is True or ablation == "all":
            ablation = names
        elif ablation in (False, None):
            ablation = []
        with self.part():
            if not isinstance(ablation, list):
                raise self.err("report.ablation", f"expected true, 'all' or a list of names from {', '.join(names)}")
            for i, a in enumerate(ablation if methods_ok else []):
                with self.part():
                    self.member("method", a, names, f"report.ablation[{i}]")
        main = rep.get("main")
        with self.part():
            if main is not None and (not isinstance(main, list) or not main):
                raise self.err("report.main", f"expected a non-empty list of the rows the main table and figures "
                                              f"show, from {', '.join(names)} (left out: every row)")
            for i, a in enumerate(main if methods_ok and isinstance(main, list) else []):
                with self.part():
                    self.member("method", a, names, f"report.main[{i}]")
        caption = rep.get("caption")
        with self.part():
            if caption is not None and not isinstance(caption, str):
                raise self.err("report.caption", "expected a string")
        paired = rep.get("paired")
        with self.part():
            if paired is not None and not isinstance(paired, str):
                raise self.err("report.paired", f"expected one method name (the reference of the paired table), "
                                                f"got {paired!r}")
            if paired is not None and methods_ok:
                self.member("method", paired, names, "report.paired")
        row_names: dict[str, str] = {}
        with self.part():
            given = rep.get("names")
            if given is not None and not isinstance(given, dict):
                raise self.err("report.names", "expected a mapping of row names to the names the tables print, "
                                               "e.g. {mgrq: MGRQ (ours)}")
            for k, v in (given or {}).items():
                with self.part():
                    if methods_ok:
                        self.member("method", str(k), names, f"report.names.{k}")
                    if not isinstance(v, str) or not v.strip() or any(c in v for c in "|\n\r"):
                        raise self.err(f"report.names.{k}", f"expected a non-empty one-line string without '|' "
                                                            f"(a Markdown table's separator), got {v!r}")
                    row_names[str(k)] = v.strip()
        if row_names:  # two rows printed alike would read as one method
            with self.part():
                from reports.tables import METHOD_NAMES

                printed: dict[str, list[str]] = {}
                for n in names:
                    printed.setdefault(row_names.get(n) or METHOD_NAMES.get(n, n), []).append(n)
                same = {p: rows for p, rows in printed.items() if len(rows) > 1 and any(r in row_names for r in rows)}
                if same:
                    p, rows = next(iter(same.items()))
                    raise self.err("report.names", f"rows {' and '.join(rows)} would both print as {p!r}; expected "
                                                   "one printed name per row")
        eval_limit, image_bits = None, 8
        bits_overrides: tuple[tuple[str, Any], ...] = ()
        with self.part():
            eval_limit = self.opt_int(d.get("eval_limit"), "eval_limit")
        with self.part():
            image_bits = self.opt_int(d.get("image_bits", 8), "image_bits", 2, 16) or 8
        with self.part():
            bits_overrides = self.bits_overrides(d.get("bits_overrides"), "bits_overrides")
        if self.problems:
            raise self.failed()
        if root is not None and not Path(root).is_absolute():
            root = str((self.path.parent / root).resolve())
        ck = {m: p if Path(p).expanduser().is_absolute() else str((self.path.parent / p).resolve())
              for m, p in ck.items()}
        suite = Suite(
            name=name, path=self.path, description=d["description"].strip(),
            command=d["command"].strip(), models=tuple(models), bits=tuple(bits), methods=tuple(methods),
            seeds=tuple(seeds), only=only, calib=calib, data_root=root, eval_split=eval_split,
            checkpoints=tuple(sorted(ck.items())), eval_limit=eval_limit, image_bits=image_bits,
            bits_overrides=bits_overrides, executor=tuple(sorted(ex.items())), ablation=tuple(ablation),
            main=tuple(main) if isinstance(main, list) else (),
            caption=caption, paired=paired, row_names=tuple(row_names.items()), raw=d,
        )
        if self.check_names:
            try:
                specs = suite.specs()
            except ConfigError as e:
                raise ConfigError(f"{self.path}: {e}") from None
            if only and not specs:
                raise self.err("only", f"'{only}' matches none of the {len(replace(suite, only=None).specs())} "
                                       f"cells of models x bits x methods x seeds; expected a regex searched in "
                                       f"their ids (MODEL.METHOD.WxAy.sSEED)")
        return suite
