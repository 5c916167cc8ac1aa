"""What runs inside a job: a list of cells, executed one after the other.

A job receives paths and spec dicts, never models. Each cell is a pure function of its spec:
``mgrq.run.execute`` -> record, written atomically. A cell that raises becomes a ``failed``
record with its traceback and the job goes on with the next cell. A cell whose record already
says ``done`` is skipped, which is what makes jobs checkpointable: a preempted or requeued job
(SLURM ``scontrol requeue``, a timeout, a USR2 preemption signal) starts again from the same
pickled :class:`CellJob`, skips the finished cells and redoes only the interrupted one.
Compute nodes never talk to MLflow; the driver mirrors the records afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from mgrq import records
from mgrq.runner.layout import Cell, append_event


class _Tee(io.TextIOBase):
    """Write to a file and to the job's own stream (so submitit's log has it too)."""

    def __init__(self, *streams: Any):
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()


def executor_info(kind: str, threads: int) -> dict[str, Any]:
    """Where this cell runs: executor, job ids (SLURM array ids), host, restart count."""
    info: dict[str, Any] = {"name": kind, "threads": threads, "host": records.host(), "pid": os.getpid()}
    try:
        from submitit import JobEnvironment

        env = JobEnvironment()
        info.update(job_id=env.job_id, array_job_id=env.array_job_id,
                    array_task_id=env.array_task_id)
    except Exception:  # not inside a submitit job (a plain function call)
        info["job_id"] = None
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if kind == "slurm":
        info.update(
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            slurm_array_job_id=os.environ.get("SLURM_ARRAY_JOB_ID"),
            slurm_array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"),
            slurm_partition=os.environ.get("SLURM_JOB_PARTITION"),
            slurm_restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
        )
    return info


def set_thread_budget(threads: int) -> None:
    """Give this process ``threads`` CPU threads (before torch starts its pools), and its image
    decoding as many loader processes less one, unless ``$MGRQ_DATA_WORKERS`` says otherwise."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    from mgrq.evaluate import WORKERS_ENV, default_workers

    os.environ.setdefault(WORKERS_ENV, str(default_workers(threads)))
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # only allowed before the first parallel region
        torch.set_num_interop_threads(1)


def run_cell(cell: Cell, suite: dict[str, Any], kind: str, threads: int,
             fp_cache: dict | None = None) -> dict[str, Any]:
    """Run one cell unless its record says ``done``; returns ``{id, status, seconds}``."""
    prev = cell.record()
    if prev is not None and prev.get("status") == "done":
        print(f"[cell] {cell.run_id}: done before, skipped", flush=True)
        return {"id": cell.run_id, "status": "skipped", "seconds": 0.0}

    from mgrq.run import execute, failed_record
    from mgrq.spec import RunSpec

    spec = RunSpec.from_dict(cell.spec)
    started = records.now()
    info = executor_info(kind, threads)
    head = {"schema": records.SCHEMA, "id": spec.run_id, "hash": spec.content_hash,
            "status": "running", "spec": spec.to_dict(), "started": started,
            "executor": info, "suite": suite}
    records.write_record(cell.record_path, head)
    append_event(cell, "start", job_id=info.get("job_id"), host=info["host"],
                 restart=info.get("slurm_restart_count", 0))
    t0 = time.perf_counter()
    (cell.dir / "work").mkdir(exist_ok=True)
    with open(cell.log_path, "a") as log:
        log.write(f"=== {started} {spec.run_id} on {info['host']} (job {info.get('job_id')}) ===\n")
        log.flush()
        tee_out, tee_err = _Tee(log, sys.stdout), _Tee(log, sys.stderr)
        with contextlib.redirect_stdout(tee_out), contextlib.redirect_stderr(tee_err):  # type: ignore[type-var]
            print(f"[cell] {spec.run_id}: start ({spec.content_hash})", flush=True)
            interrupted = False
            try:
                rec = execute(spec, progress=False, workdir=str(cell.dir / "work"), fp_cache=fp_cache)
            except (KeyboardInterrupt, Exception) as e:  # recorded; the rest of the grid goes on
                rec = failed_record(spec, e, started)
                # Ctrl-C, the driver cancelling its jobs, a local SIGTERM: the job stops after this cell
                interrupted = caused_by_interrupt(e)
                if interrupted:
                    rec["error"].update(type="Interrupted", message=INTERRUPTED)
                else:
                    print(rec["error"]["traceback"], file=sys.stderr, flush=True)
            seconds = time.perf_counter() - t0
            rec["executor"] = info
            rec["suite"] = suite
            if rec["status"] == "done":
                m = rec["metrics"]
                print(f"[cell] {spec.run_id}: done, top-1 {m['top1']:.2f} "
                      f"(FP {m['fp_top1']:.2f}) in {seconds:.1f}s", flush=True)
            else:
                print(f"[cell] {spec.run_id}: FAILED ({rec['error']['type']}: "
                      f"{rec['error']['message'][:200]})", flush=True)
    records.write_record(cell.record_path, rec)
    append_event(cell, "interrupted" if interrupted else rec["status"], job_id=info.get("job_id"),
                 seconds=round(seconds, 2))
    if interrupted:
        raise KeyboardInterrupt
    return {"id": cell.run_id, "status": rec["status"], "seconds": seconds}


INTERRUPTED = ("interrupted before it finished (SIGINT or SIGTERM: Ctrl-C, or the suite driver stopping "
               "its local jobs); the next run of the suite runs this cell again")


def caused_by_interrupt(e: BaseException) -> bool:
    """Whether ``e`` was raised because of a ``KeyboardInterrupt`` (in its cause or context
    chain). Python before 3.12 wraps an exception raised in ``__set_name__`` in a
    ``RuntimeError``, so a stop that lands while a dataclass is being defined (a job still
    importing the method code) arrives as ``RuntimeError: Error calling __set_name__ ...``."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _interrupt_on_sigterm(signum: int, frame: Any) -> None:
    """A local job told to stop (``kill PID``) ends its cell like Ctrl-C: an ``Interrupted``
    record, then the job exits (submitit would log the signal and carry on)."""
    raise KeyboardInterrupt


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    """SLURM sends SIGTERM when it requeues, preempts or cancels a job. submitit ignores it
    (its checkpointing runs on USR2, before), and where the cluster's process tracking does not
    follow up with SIGKILL the cell would run on and finish after its job was requeued. Stop at
    once instead: the cell's record stays ``running`` and the restarted job redoes it."""
    print("[job] SIGTERM (requeue, preemption or cancel): stopping; the unfinished cell runs again when "
          "the job restarts (requeue, preemption) or the suite runs again (cancel)", file=sys.__stderr__, flush=True)
    os._exit(128 + signum)


def claim(claims: Path, run_id: str, owner: int) -> bool:
    """Atomically claim a cell for job ``owner`` (a file created with O_EXCL under ``claims``).
    True when this job may run it: the claim is new, or it is this job's own (a requeued job
    takes its interrupted cell again)."""
    path = claims / run_id
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return path.read_text().strip() == str(owner)
    with os.fdopen(fd, "w") as f:
        f.write(str(owner))
    return True


def claimed_by(claims: Path, cells: list[Cell], owner: int) -> list[Cell]:
    """The cells of ``cells`` that job ``owner`` claimed."""
    out = []
    for c in cells:
        with contextlib.suppress(OSError):
            if (claims / c.run_id).read_text().strip() == str(owner):
                out.append(c)
    return out


class CellJob(Checkpointable):
    """A submitit job: run ``cells`` in order with a torch thread budget.

    With ``claims`` (a folder shared by the local jobs of one submission), the job runs only the
    cells it claims first (:func:`claim`): jobs side by side share one work list and none sits
    idle while cells are left.

    ``checkpoint`` (called by submitit on preemption or timeout) resubmits the job unchanged:
    the finished cells are on disk and are skipped when it starts again.
    """

    def __init__(self, cells: list[Cell], suite: dict[str, Any], kind: str, threads: int,
                 claims: Path | None = None, owner: int = 0, gpu: str | None = None):
        self.cells = [Cell(c.run_id, c.hash, Path(c.dir), dict(c.spec)) for c in cells]
        self.suite = dict(suite)
        self.kind = kind
        self.threads = int(threads)
        self.claims, self.owner = (Path(claims) if claims is not None else None), int(owner)
        self.gpu = gpu  # local jobs: the CUDA_VISIBLE_DEVICES entry this job runs on ("" for none)

    def __call__(self) -> list[dict[str, Any]]:
        if self.gpu is not None:  # before CUDA starts in this process (it reads the variable then)
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpu
        import torch

        before = torch.get_num_threads()
        set_thread_budget(self.threads)
        if self.kind == "slurm":
            signal.signal(signal.SIGTERM, _stop_on_sigterm)
        elif self.kind == "local":
            signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        fp_cache: dict = {}  # FP accuracy shared by the cells of one model within this job
        try:
            return [run_cell(c, self.suite, self.kind, self.threads, fp_cache) for c in self.cells
                    if self.claims is None or claim(self.claims, c.run_id, self.owner)]
        finally:
            if self.kind == "debug":  # in-process: give the caller its threads back (submitit restores
                torch.set_num_threads(before)  # the environment)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        done = sum(c.status() == "done" for c in self.cells)
        print(f"[job] checkpoint: {done}/{len(self.cells)} cells done; the requeued job skips them",
              flush=True)
        return DelayedSubmission(self, *args, **kwargs)
