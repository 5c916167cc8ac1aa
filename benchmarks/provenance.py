"""A benchmark's figures with where they came from, written with ``--save FILE.json``: the command,
the source tree (git sha, ``+dirty`` when the code or a benchmark differs from it), the machine, the package
versions and the times, beside the table as printed and each row's raw figures. A figure quoted
in a document can then name the file that holds it, and the command that gives it again."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

from mgrq import records


def check(path: str | None) -> None:
    """Fail before any work when ``--save`` cannot be written (a folder given, a path below a
    file, a place where no file can be created; an empty one is refused by its type,
    :func:`mgrq.config.path_arg`); missing folders are created when it is saved."""
    if path:
        records.check_writable(path, "--save")


def meta(module: str, argv: list[str] | None, device: str) -> dict[str, Any]:
    """What a figure depends on besides the code's own numbers: command, tree, machine, versions.
    Called at the start, so ``started`` is the launch. ``git_sha`` is the checkout this benchmark
    runs from, ``benchmarks/`` counted as code; where ``mgrq`` is imported from elsewhere (an
    installed copy), its own tree is kept too, since its code is what was timed."""
    import mgrq

    root = Path(__file__).resolve().parent.parent
    out = {"command": shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)]),
           "git_sha": records.tree_sha(root, (*records.CODE_PATHS, "benchmarks")), "device": device,
           "cpu": records.cpu_name(), "host": records.host(), "versions": records.versions(), "started": records.now()}
    src = Path(mgrq.__file__).resolve().parent
    if src.parent != root:
        out["mgrq_source"] = {"path": str(src), "git_sha": records.git_sha()}
        print(f"warning: mgrq is imported from {src}, not from this checkout ({root}); the figures time that code",
              file=sys.stderr)
    return out


def header(meta: dict[str, Any]) -> str:
    """One line to print first, so a pasted table carries its source tree and machine."""
    return f"source tree {meta['git_sha'] or 'not a git checkout'} | {meta['device']} | processor {meta['cpu']}"


def save(path: str | None, meta: dict[str, Any], table: list[str], rows: list[dict[str, Any]]) -> None:
    """Write the JSON (nothing when ``path`` is None) and say where."""
    if not path:
        return
    records.write_record(path, {**meta, "finished": records.now(), "table": table, "rows": rows})
    print(f"saved: {Path(path).resolve()}")
