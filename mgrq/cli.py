"""The ``mgrq`` command line.

    mgrq quantize --model tiny_vit --method percentile --w-bits 4 --a-bits 4 [--record run.json]
    mgrq models | mgrq methods
    mgrq zoo train tiny_vit --out tiny_vit.pth
    mgrq suite run|list|status ...    mgrq mirror ...    mgrq report ...   (the harness, mgrq.runner)

Every user error prints one line (``error: ...``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mgrq.config import path_arg
from mgrq.errors import MGRQError, did_you_mean

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name (see `mgrq models`), e.g. tiny_vit or deit_small_patch16_224")
    p.add_argument("--method", required=True, help="method name (see `mgrq methods`)")
    p.add_argument("--w-bits", type=int, required=True, help="weight bit-width, 2..16")
    p.add_argument("--a-bits", type=int, required=True, help="activation bit-width, 2..16")
    p.add_argument("--image-bits", type=int, default=8, help="bit-width of the image input (default 8)")
    p.add_argument("--calib", type=int, default=None, help="calibration images (default: the method's own, e.g. 32 for RepQ-ViT)")
    p.add_argument("--seed", type=int, default=0, help="seed for calibration sampling and the method (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present; default)")
    p.add_argument("--checkpoint", default=None, type=path_arg,
                   help="local weights file (a state_dict in timm's key layout, as timm's own checkpoints and "
                        "DeiT's releases; plain, under 'model'/'state_dict', or .safetensors) instead of the "
                        "zoo/timm weights")
    p.add_argument("--data-root", default=None, type=path_arg, help="ImageNet-layout folder (train/<class>/..., val/<class>/...) for timm models")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on N images spread evenly over the eval set (every class of an ImageNet val/ once N >= 1000; smoke runs)")
    p.add_argument("--eval-split", choices=("heldout", "tune"), default="heldout",
                   help="heldout (default): the final numbers, on the tiny zoo's 1,000 held-out digits or ImageNet's "
                        "val/; tune: for choosing hyper-parameters, on 500 digits or 10 train/ images per class "
                        "carved from the training images, which calibration then does not draw from")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="override a method config field (repeatable), e.g. --set act_init=minmax")
    p.add_argument("--bits-override", action="append", metavar="REGEX=BITS",
                   help="layer policy: points whose name matches REGEX get BITS (or 'fp'), e.g. '^head\\.=8'")


SPEC_FLAGS = ("w_bits", "a_bits", "image_bits", "seed", "calib", "eval_limit")
"""The spec fields ``quantize`` takes from options of the same name (``--w-bits`` ...): its errors
name the option, as typed, not the field."""


def _spec_from_args(args: argparse.Namespace):
    from mgrq.config import parse_assignments
    from mgrq.errors import ConfigError
    from mgrq.spec import FieldError, RunSpec

    overrides = []
    for pattern, value in parse_assignments(args.bits_override, "--bits-override").items():
        overrides.append((pattern, value if value == "fp" else int(value) if value.isdigit() else value))
    try:
        return RunSpec(
            model=args.model, method=args.method, w_bits=args.w_bits, a_bits=args.a_bits,
            seed=args.seed, calib=args.calib, method_config=tuple(parse_assignments(args.overrides).items()),
            image_bits=args.image_bits, bits_overrides=tuple(overrides), checkpoint=args.checkpoint,
            data_root=args.data_root, eval_split=args.eval_split, eval_limit=args.eval_limit, device=args.device,
        )
    except FieldError as e:  # "w_bits=17: expected ..." -> "--w-bits 17: expected ..."
        if e.field not in SPEC_FLAGS:
            raise
        raise ConfigError(f"--{e.field.replace('_', '-')} {getattr(args, e.field)}: {e.expected}") from None


def cmd_quantize(args: argparse.Namespace) -> int:
    from mgrq.errors import ConfigError

    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: expected 0 (torch's default) or a positive number")
    _run_spec(_checked(_spec_from_args(args)), args.record, args.threads, args.quiet)
    return 0


QUANTIZE_NAMES = {"data_root": "--data-root", "calib": "--calib", "set": "--set", "bits": "--bits-override", "where": "",
                  "checkpoint": ""}
"""How ``quantize``'s errors name the parts of a spec: by its options (:func:`_checked`)."""


def _checked(spec: Any, names: dict[str, str] = QUANTIZE_NAMES) -> Any:
    """``spec`` checked before any work (model, data folders, weights, method config, layer
    policy, units), with its ``--set`` values as the config fields' types. ``names``: what the
    errors call the spec's data root, calibration size, method config and layer policy, and the
    prefix of the data folder's (the options of ``quantize``; a record's fields for ``rerun``)."""
    from mgrq.data import check_class_images, check_imagenet_root
    from mgrq.errors import CheckpointError, ConfigError
    from mgrq.methods import get_method
    from mgrq.methods.registry import check_init_calib, run_calib
    from mgrq.zoo import (
        check_checkpoint,
        check_overrides,
        check_pretrained_cached,
        check_units,
        get_entry,
        num_classes,
    )

    def weights() -> int:  # the weights file read and fitted to the model, named as the caller names it
        try:
            return check_checkpoint(spec.model, spec.checkpoint)
        except CheckpointError as e:
            raise CheckpointError(f"{names['checkpoint']}{e}") from None

    if get_entry(spec.model).tiny:  # fail fast, before loading anything
        if spec.data_root is not None:
            raise ConfigError(f"{names['data_root']} {spec.data_root}: model {spec.model} is from the tiny zoo and is "
                              f"evaluated on the embedded MNIST digits; expected {names['data_root']} only with an "
                              "ImageNet (timm) model")
        if spec.checkpoint:
            weights()
    else:  # the folders first (cheap), then the weights, then the class folders against their head
        check_imagenet_root(spec.data_root, spec.model, names["where"], eval_split=spec.eval_split)
        n = weights() if spec.checkpoint else num_classes(spec.model)
        check_imagenet_root(spec.data_root, spec.model, names["where"], num_classes=n, eval_split=spec.eval_split)
        check_class_images(spec.data_root, tune=spec.eval_split == "tune", calib=(
            run_calib(spec), names["calib"] if spec.calib is not None else f"method {spec.method} (its default)"))
        if not spec.checkpoint:  # offline, the hub weights must be cached
            check_pretrained_cached(spec.model)
    cfg = get_method(spec.method).make_config(dict(spec.method_config))  # a bad --set fails here too
    # the record keeps each --set value as the field's type (iters 20, not '20'; a float field's 1 as 1.0)
    spec = dataclasses.replace(spec, method_config=tuple(sorted((k, getattr(cfg, k)) for k, _ in spec.method_config)))
    check_init_calib(spec, f"{names['set']} ")
    check_overrides(spec.bits_overrides, [spec.model], names["bits"])
    check_units(dict(spec.method_config).get("units"), [spec.model], names["set"])
    return spec


def _run_spec(spec: Any, record: str | None, threads: int, quiet: bool,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``spec`` with ``threads`` torch threads (0: torch's default), print its top-1 line and
    write its record, with the fields of ``extra`` added, to ``record``; a failure is written
    there too, unless it holds a done record."""
    from mgrq import records
    from mgrq.run import execute, failed_record

    if record:
        records.check_writable(record, "--record")
    if threads:
        import torch

        torch.set_num_threads(threads)
    started = records.now()
    try:
        rec = execute(spec, progress=not quiet)
    except BaseException as e:
        if record and not isinstance(e, KeyboardInterrupt):
            old = records.read_record(record)
            if old is not None and old.get("status") == "done":  # keep a finished result
                print(f"note: {record} holds a done record; the failure is not written over it",
                      file=sys.stderr)
            else:
                records.write_record(record, failed_record(spec, e, started))
        raise
    rec.update(extra or {})
    m = rec["metrics"]
    print(f"{spec.run_id}: FP top-1 {m['fp_top1']:.2f}  {spec.bits} top-1 {m['top1']:.2f}  "
          f"(delta {m['top1'] - m['fp_top1']:+.2f}; {int(m['n_eval'])} images; {_ran_on(rec)}; "
          f"quantize {rec['timings']['quantize_s']:.1f}s, total {rec['timings']['total_s']:.1f}s)")
    if spec.eval_limit is not None and m["n_eval"] < spec.eval_limit:
        print(f"note: the eval limit {spec.eval_limit} is more than the {int(m['n_eval'])} images of the eval set: "
              "every image was evaluated", file=sys.stderr)
    if record:
        path = records.write_record(record, rec)
        print(f"record: {path}")
    return rec


def _ran_on(rec: dict[str, Any]) -> str:
    """``cpu, 2 threads`` or ``cuda:0``: where a record ran, with what decides a CPU result."""
    from mgrq.records import cpu_threads

    t = cpu_threads(rec)
    return f"{rec.get('device')}, {t} thread{'s' * (t != 1)}" if t is not None else str(rec.get("device"))


RERUN_KEYS = ("top1", "top5", "fp_top1", "fp_top5", "n_eval")


def _rerun_input(path: str) -> dict[str, Any]:
    """The done record at ``path``, or a :class:`ConfigError` saying why it is none."""
    from mgrq import records
    from mgrq.errors import ConfigError

    old = records.read_record(path)
    if os.path.isdir(path):
        why: str | None = "a folder"
    elif old is None:
        why = "not a JSON object" if os.path.isfile(path) else "no such file"
    else:
        why = records.problem(old) or (None if old.get("status") == "done" else
                                       f"its status is {old.get('status')!r}: there is no result to compare with")
    if why or old is None:
        raise ConfigError(f"{path}: not a done run record ({why}); expected a record.json of a finished cell or a "
                          "`mgrq quantize --record` file")
    t = old.get("torch_threads")
    if records.ran_on_cpu(old) and t is not None and records.cpu_threads(old) is None:
        raise ConfigError(f"{path}: torch_threads is {t!r}; expected a positive integer (or pass --threads N)")
    return old


def cmd_rerun(args: argparse.Namespace) -> int:
    """Run a record's spec again, as it ran (its device type and, on a CPU, its torch threads),
    and say whether it came out the same: exit 0 when it did, 1 when not."""
    from mgrq import records
    from mgrq.errors import ConfigError
    from mgrq.methods import all_methods
    from mgrq.spec import RunSpec

    path = args.record_file
    old = _rerun_input(path)
    if args.record and os.path.abspath(args.record) == os.path.abspath(path):
        raise ConfigError(f"--record {args.record}: the record being rerun; expected another path (it is the evidence)")
    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: expected 0 (the record's count) or a positive number")
    spec = RunSpec.from_dict(old["spec"])
    module = str((old.get("method") or {}).get("module") or "")
    if spec.method not in {m.name for m in all_methods()} and module and module.split(".")[0] not in ("mgrq", "baselines"):
        raise ConfigError(f"{path}: method {spec.method} came from module {module}, which is not loaded here; "
                          f"expected MGRQ_METHODS={module} with the module importable (docs/methods.md)")
    ran = str(old.get("device"))
    on_cuda = ran.startswith("cuda")
    recorded = records.cpu_threads(old)  # None for a GPU record
    if args.device is None:
        device = (spec.device if str(spec.device).startswith("cuda") else "cuda") if on_cuda else "cpu"
        if on_cuda:
            from mgrq.runner.executors import cuda_count

            if not cuda_count():
                raise ConfigError(f"{path}: it ran on {ran} ({old.get('device_name') or 'a GPU'}) and this machine has "
                                  "no CUDA device; expected a GPU, or --device cpu (the numbers may then differ)")
    else:
        device = args.device
    spec = dataclasses.replace(spec, device=device)
    threads = args.threads or recorded or 0
    header = f"rerun of {path}: {spec.run_id} ({spec.content_hash}), as it ran on {_ran_on(old)}"
    names = {"data_root": f"{path}: spec.data_root", "calib": f"{path}: spec.calib", "where": f"{path}: ",
             "set": f"{path}: spec.method_config", "bits": f"{path}: spec.bits_overrides",
             "checkpoint": f"{path}: spec."}
    recorded_paths = {"data_root": spec.data_root, "checkpoint": spec.checkpoint}
    notes = []
    for field, opt, kind in (("data_root", "--data-root", "folder"), ("checkpoint", "--checkpoint", "file")):
        moved_to, was = getattr(args, field), recorded_paths[field]
        if moved_to is None:
            if was is not None and not os.path.exists(was):  # moved, or another machine: say how to point at it
                raise ConfigError(f"{path}: spec.{field} {was}: no such {kind} here; expected it there, or "
                                  f"{opt} {kind.upper() if kind == 'file' else 'DIR'} where it is on this machine")
            continue
        if was is None:
            raise ConfigError(f"{opt} {moved_to}: {path} names no {field} (spec.{field} is null); expected {opt} only "
                              f"for a record whose spec names one, to say where it is on this machine")
        if os.path.realpath(moved_to) == os.path.realpath(was):  # the same place, by another name
            continue
        spec = dataclasses.replace(spec, **{field: moved_to})
        names = {**names, **({"where": "", "data_root": opt} if field == "data_root" else {"checkpoint": "--"})}
        notes.append(f"spec.{field} {was} -> {moved_to} ({opt}): the cell hash takes the path, so it is compared "
                     "as if the path had not moved")
    checked = _checked(spec, names)  # bad input fails here, before anything is printed or run
    if args.record:
        records.check_writable(args.record, "--record")
    print(header)
    if args.device is not None and args.device.split(":")[0] != ran.split(":")[0]:
        notes.append(f"it ran on {ran}, this run on --device {args.device}: the numbers may differ")
    if args.threads and recorded is not None and args.threads != recorded:
        notes.append(f"it ran with {recorded} torch thread(s), this run with --threads {args.threads}: "
                     "on a CPU a reconstruction's result depends on them")
    for what, was, now in (("the git sha differs", old.get("git_sha"), records.git_sha()),
                           ("the package versions differ", old.get("versions"), records.versions())):
        if was and now and was != now:
            diff = (", ".join(f"{k} {was.get(k)} -> {now.get(k)}" for k in sorted({*was, *now}) if was.get(k) != now.get(k))
                    if isinstance(was, dict) and isinstance(now, dict) else f"{records.short_sha(was)} -> {records.short_sha(now)}")
            notes.append(f"{what} from the record's: {diff}")
    for msg in notes:
        print(f"note: {msg}")
    rec = _run_spec(checked, args.record, threads, args.quiet,  # the new record names the one it reran
                    {"rerun_of": {"record": os.path.abspath(path), "id": old.get("id"), "hash": old.get("hash")}})
    if (was_on := old.get("device_name")) and was_on != rec.get("device_name"):
        print(f"note: the record ran on {was_on}, this run on {rec.get('device_name')}")
    m = (old.get("method") or {}).get("module_sha256"), (rec.get("method") or {}).get("module_sha256")
    if m[0] and m[1] and m[0] != m[1]:
        print(f"note: method module {module} is another version than the record's (module_sha256 "
              f"{m[0][:12]} -> {m[1][:12]})")
    same_place = dataclasses.replace(checked, **recorded_paths).content_hash  # rec["hash"] unless a path moved
    moved = [f"hash {old.get('hash')} -> {same_place}"] if same_place != old.get("hash") else []
    unchecked = []  # what the record does not hold (an older record), so the verdict cannot include it
    for what, sect, key in (("weights sha256", "weights", "sha256"), ("calibration ids_hash", "calibration", "ids_hash"),
                            ("eval_ids_hash", "data", "eval_ids_hash")):
        was, now = (old.get(sect) or {}).get(key), (rec.get(sect) or {}).get(key)
        if was is None:
            unchecked.append(f"{sect}.{key}")
        elif was != now:  # other weights, or other images by name
            moved.append(f"{what} {str(was)[:16]} -> {str(now)[:16]}")
    was_cfg, now_cfg = (old.get("method") or {}).get("config") or {}, (rec.get("method") or {}).get("config") or {}
    moved += [f"method.config.{k} {was_cfg.get(k)!r} -> {now_cfg.get(k)!r}" for k in sorted({*was_cfg, *now_cfg})
              if k in was_cfg and was_cfg.get(k) != now_cfg.get(k)]  # a field added since is not compared
    m_old, m_new = old.get("metrics") or {}, rec["metrics"]
    moved += [f"{k} {m_old.get(k)} -> {m_new.get(k)}" for k in RERUN_KEYS if m_old.get(k) != m_new.get(k)]
    if unchecked:
        print(f"note: the record holds no {', '.join(unchecked)}, so {'that was' if len(unchecked) == 1 else 'those were'} "
              "not compared: the verdict below covers the rest")
    if moved:
        print(f"differs from the record: {'; '.join(moved)}")
        return 1
    print("same as the record, bit for bit: " + ", ".join(f"{k} {m_new[k]:.2f}" if k != "n_eval" else f"{k} {m_new[k]}"
                                                        for k in RERUN_KEYS))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from mgrq.zoo import ZOO

    for e in ZOO.values():
        print(f"{e.name:32s} {e.family:5s} {e.description}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from mgrq.methods import all_methods, get_method

    if not getattr(args, "name", None):
        methods = all_methods()
        w = max([18] + [len(m.name) for m in methods])  # a plugin's long name keeps the column
        for m in methods:
            print(f"{m.name:{w}s} {m.description} (default calib {m.default_calib})")
        print("\n`mgrq methods NAME` lists a method's config fields, what each means and the values it accepts "
              "(set them with --set FIELD=VALUE)", file=sys.stderr)
        return 0
    from mgrq.methods.fields import describe

    m = get_method(args.name)
    print(f"{m.name}: {m.description} (default calib {m.default_calib})")
    docs = describe(m)
    w = max([18] + [len(d.name) for d in docs])  # a long field name keeps the '=' column
    for name, default, meaning, choices in docs:
        line = f"  {name:{w}s} = {default!r:12s} # {meaning or '(not described)'}"
        if choices is not None:  # the allowed values; one only where this method fixes the field
            line += " [fixed here]" if len(choices) == 1 else f" [{'|'.join(map(str, choices))}]"
        print(line)
    return 0


def cmd_zoo_train(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from mgrq.errors import ConfigError, unknown
    from mgrq.records import check_writable
    from mgrq.zoo import WEIGHTS_DIR, ZOO, tiny_weights_path, train_tiny

    if args.threads < 0:
        raise ConfigError(f"--threads {args.threads}: expected 0 (torch's default) or a positive number")
    tiny = sorted(n for n, e in ZOO.items() if e.tiny)
    if args.name not in tiny:  # before any path: an unknown name is named as such, not as a missing file
        if args.name in ZOO:
            raise ConfigError(f"zoo train {args.name}: only the tiny zoo is trained here; expected one of "
                              f"{', '.join(tiny)}")
        raise unknown("tiny-zoo model", args.name, tiny)
    own = tiny_weights_path(args.name)
    target = Path(args.out) if args.out is not None else own  # --out: absolute, ~ expanded (path_arg)
    if args.out is not None:
        if target.suffix.lower() in (".json", ".safetensors"):  # .json: the metadata would be written over the weights
            raise ConfigError(f"zoo train {args.name}: --out {args.out}: the weights are written with torch.save, and "
                              f"their metadata beside them as {target.with_suffix('.json').name}; expected a path "
                              f"such as {target.with_suffix('.pth').name}")
        check_writable(target, "--out")
    real = target.resolve()
    shipped = real == own.resolve()
    if real.parent == WEIGHTS_DIR.resolve() and not shipped:
        raise ConfigError(f"zoo train {args.name}: --out {args.out}: {WEIGHTS_DIR} holds the shipped checkpoints, "
                          f"one NAME.pth (and its NAME.json) per tiny model; expected a path elsewhere, or no --out "
                          f"(with --force) to replace {own.name}")
    written = [f for f in (target, target.with_suffix(".json")) if f.exists()]  # the checkpoint and its metadata
    if written and not args.force:
        what = (" (the shipped checkpoint every tiny-zoo result was computed with" + (", and its metadata)"
                if len(written) == 2 else ")")) if shipped else ""
        instead = "--out PATH for a new checkpoint" if shipped else "a new --out PATH"
        raise ConfigError(f"zoo train {args.name}: {' and '.join(map(str, written))} exist{'s' * (len(written) == 1)}"
                          f"{what}; expected {instead}, or --force to replace "
                          f"{'it' if len(written) == 1 else 'them'}")
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = train_tiny(args.name, out=args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(json.dumps(meta, indent=2))
    return 0


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line, plus one check: an option the command does not know is
    named first, with the nearest known option (argparse would first report the required options
    a typo left out: ``--modle x`` gave "the following arguments are required: --model").
    Subcommands inherit it."""

    def error(self, message: str) -> Any:
        """One line, as every other user error (argparse prints the whole usage block first)."""
        self.exit(2, f"error: {self.prog}: {message}; see '{self.prog} --help'\n")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if args is not None and self._subparsers is None:  # a command's own tokens, options and values
            self._check_options(list(args))
        return super().parse_known_args(args, namespace)

    def _check_options(self, args: list[str]) -> None:
        """Tokens read as argparse reads them: a value (the token after an option that takes one,
        or a token with a space) is not an option, and ``--`` ends the options."""
        actions = self._option_string_actions
        takes_value = False
        for tok in args:
            if tok == "--":
                return
            if takes_value or " " in tok:
                takes_value = False
                continue
            name, eq, _ = tok.partition("=")
            if not name.startswith("--") or len(name) <= 2:
                continue
            hits = [k for k in actions if k.startswith(name)]
            if not hits:
                self.error(f"unrecognized option {name}{did_you_mean(name, actions)}")
            action = actions.get(name) or (actions[hits[0]] if len(hits) == 1 else None)
            takes_value = action is not None and not eq and action.nargs != 0


class _Version(argparse.Action):
    """``--version``: the package version and, from a git checkout, the source tree's commit (what
    a run record calls ``git_sha``), read only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version (and the source tree's git commit) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from mgrq import __version__
        from mgrq.records import git_sha

        sha = git_sha()
        print(f"mgrq {__version__}" + (f" (source tree {sha})" if sha else ""))
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="mgrq",
        description="Post-training quantization of Vision Transformers: MGRQ and baselines under one protocol.",
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "quantize", help="quantize one model with one method and evaluate it",
        description="Quantize a model, print FP and quantized top-1, optionally write the JSON run record. "
                    "Exit 0: done; 2: bad input (checked before any work) or a run stopped by an error it names, "
                    "such as a diverged reconstruction: one line on stderr; 1: an unexpected error (a traceback); "
                    "130: interrupted. A failed run is written to --record, unless that holds a done record.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="The reconstruction methods (brecq, qdrop, mgrq and its variants) default to paper scale:\n"
               "20,000 iterations per unit (brecq adds act_iters=5,000) on 1,024 calibration images,\n"
               "which takes tens of minutes per tiny model on a CPU. The suites' short budget is\n"
               "  --calib 256 --set iters=100 --set lr_round=0.01 --set lr_step=0.001\n"
               "(brecq: also --set act_iters=25). `mgrq methods NAME` lists a method's fields.\n"
               "The quantized model is evaluated and dropped; the run record keeps the result.")
    _add_run_options(p)
    p.add_argument("--record", default=None, type=path_arg, help="write the JSON run record to this path")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: torch's default, one per core; the record keeps the number "
                        "as torch_threads). On a CPU a reconstruction's result depends on it: to reproduce a suite "
                        "cell, give its record's torch_threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser(
        "rerun", help="run a record's spec again, as it ran, and say whether the result is the same",
        description="Run the spec of a run record (a suite cell's record.json or a `quantize --record` file) "
                    "again, on its device type and, on a CPU, with its torch threads, and compare with the record: "
                    "top-1, top-5, FP top-1/top-5, the number of images, the cell hash, the ids hashes of the "
                    "calibration and evaluated images, the weights' SHA-256 and the method config (a hash the "
                    "record lacks, as an older one may, is named in a note and not compared). Exit 0: the "
                    "same; 1: not (each difference named); 2: bad input.",
        epilog="On a CPU a reconstruction's result depends on the torch thread count, so a rerun takes the "
               "record's (torch_threads) unless --threads says otherwise. A record made on a GPU needs a GPU "
               "(or --device cpu). It notes a git sha, package versions, a processor (device_name) or a method "
               "module of one's own (module_sha256) that differ from the record's: float results can move with them.")
    p.add_argument("record_file", metavar="RECORD", type=path_arg, help="the run record (JSON) to run again")
    p.add_argument("--record", default=None, type=path_arg, metavar="PATH",
                   help="write the new run record to this path (not RECORD itself)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the record's device type)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: the record's, on a CPU)")
    p.add_argument("--data-root", default=None, type=path_arg, metavar="DIR",
                   help="where the record's ImageNet-style folder (spec.data_root) is on this machine, when it moved; "
                        "the evaluated and calibration images are compared by name (their ids hashes), not by bytes")
    p.add_argument("--checkpoint", default=None, type=path_arg, metavar="FILE",
                   help="where the record's weights file (spec.checkpoint) is on this machine, when it moved; "
                        "compared by content (the weights' SHA-256)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("models", help="list the model zoo (name first on each line)")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("methods", help="list the registered methods (name first on each line), or one "
                                        "method's config fields: default, meaning, allowed values")
    p.add_argument("name", nargs="?", help="a method: print its config fields, one a line as "
                                           "'FIELD = DEFAULT  # meaning [allowed values]' (for --set / suite config)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("zoo", help="the tiny offline zoo")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")
    t = zsub.add_parser("train", help="train a tiny-zoo model on MNIST-5k and write its checkpoint + metadata")
    t.add_argument("name", help="tiny_vit, tiny_deit or tiny_swin")
    t.add_argument("--epochs", type=int, default=None, help="default: the zoo entry's recipe")
    t.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the data order (default 0)")
    t.add_argument("--out", default=None, type=path_arg, help="checkpoint path (default: mgrq/zoo_weights/<name>.pth, the "
                                               "shipped checkpoint); an existing file only with --force")
    t.add_argument("--force", action="store_true", help="replace an existing checkpoint (the shipped "
                                                        "mgrq/zoo_weights/<name>.pth or --out's)")
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=cmd_zoo_train)

    for register in EXTRA_COMMANDS:
        register(sub)
    _describe(parser)
    return parser


def _describe(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command without a description its one-line help as one, so that
    ``mgrq models --help`` says what the command does, as the command list does."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, p in action.choices.items():
                if p.description is None and helps.get(name):
                    text = str(helps[name])
                    p.description = text[0].upper() + text[1:] + "."
                _describe(p)


def _harness_commands(sub: argparse._SubParsersAction) -> None:
    from mgrq.runner.commands import register

    register(sub)


# Harness commands (suite, mirror, report) add themselves here.
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_harness_commands]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MGRQError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        if not getattr(e, "reported", False):  # the suite driver says what became of its jobs
            print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mgrq ... | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
