"""Executing one run: a pure function of a :class:`~mgrq.spec.RunSpec` that returns its record.

load model -> data (the model's own preprocessing) -> FP evaluation -> surgery -> calibration
sample -> method -> quantized evaluation -> record.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import torch

from mgrq import records
from mgrq.errors import MGRQError
from mgrq.memory import PeakMemory
from mgrq.spec import EVAL_SUBSET


def eval_subset(n: int, limit: int | None) -> list[int] | None:
    """The images ``eval_limit`` keeps: ``limit`` of the ``n``, spread evenly over the eval set
    (``i * n // limit``), ``None`` for all. An ImageNet ``val/`` is listed class by class, so the
    first N would be the first N/50 classes only; spread, every class is in once ``limit`` is at
    least the number of classes."""
    if limit is None or limit >= n:
        return None
    return [i * n // limit for i in range(limit)]


def _eval_ids_hash(bundle: Any, limit: int | None) -> str | None:
    """The hash of the evaluated images' ids (MNIST indices, or paths under the data root), as
    the calibration's ``ids_hash``: two records with one hash evaluated the same images by name."""
    from mgrq.data import hash_ids

    ids = list(bundle.val_ids)
    if not ids:
        return None
    keep = eval_subset(len(ids), limit)
    return hash_ids(ids if keep is None else [ids[i] for i in keep])


def _subset(ds: torch.utils.data.Dataset, limit: int | None) -> torch.utils.data.Dataset:
    keep = eval_subset(len(ds), limit)  # type: ignore[arg-type]
    return ds if keep is None else torch.utils.data.Subset(ds, keep)


def execute(spec: Any, progress: bool = True, workdir: str | None = None, fp_cache: dict | None = None) -> dict[str, Any]:
    """Run ``spec`` and return its record (status ``done``). Errors propagate to the caller,
    which records them (see :func:`failed_record`). Peak memory covers this run only."""
    from mgrq.evaluate import pick_device

    with PeakMemory(pick_device(spec.device)) as mem:
        record = _execute(spec, progress, workdir, fp_cache)
    # rounded as each unit's is (engine.py): rounding keeps order, so a unit's peak stays <= the run's
    record["peak_mem_mb"], record["peak_mem_kind"] = round(mem.mb, 1), mem.kind
    return record


def _execute(spec: Any, progress: bool, workdir: str | None, fp_cache: dict | None) -> dict[str, Any]:
    from mgrq import zoo
    from mgrq.data import sample_calibration
    from mgrq.evaluate import evaluate, pick_device
    from mgrq.methods import RunContext, get_method
    from mgrq.methods.registry import module_sha256, run_calib
    from mgrq.surgery import LayerPolicy, quantize_model

    started = records.now()
    t0 = time.perf_counter()
    device = pick_device(spec.device)
    method = get_method(spec.method)
    cfg = method.make_config(dict(spec.method_config))
    policy = LayerPolicy(spec.w_bits, spec.a_bits, spec.image_bits, tuple(spec.bits_overrides))
    if hasattr(cfg, "compile"):  # the reconstruction methods: refuse CUDA graphs on a CPU up front
        from mgrq.recon.runner import check_compile_device

        check_compile_device(cfg.compile, device)
    torch.manual_seed(spec.seed)

    model = zoo.create_model(spec.model, spec.checkpoint)
    wfile = zoo.weights_file(spec.model, spec.checkpoint)  # after: timm may have just downloaded its weights
    weights: dict[str, Any] | None = {"file": str(wfile), "sha256": zoo.weights_digest(wfile)} if wfile else None
    if spec.checkpoint is None and not zoo.get_entry(spec.model).tiny:  # timm's pretrained weights, by tag
        weights = {**(weights or {"file": None, "sha256": None}), "timm": zoo.get_entry(spec.model).timm_name}
    bundle = zoo.data_bundle_for(spec.model, model, spec.data_root, spec.eval_split)
    val = _subset(bundle.val, spec.eval_limit)
    n_calib = run_calib(spec)
    calib = sample_calibration(bundle, n_calib, spec.seed)  # before the FP evaluation: a bad size fails fast
    t_load = time.perf_counter() - t0

    t = time.perf_counter()
    fp_key = (spec.model, spec.checkpoint, spec.data_root, spec.eval_split, spec.eval_limit)
    if fp_cache is not None and fp_key in fp_cache:
        fp = fp_cache[fp_key]
    else:
        fp = evaluate(model, val, device=device, progress=progress, desc=f"{spec.model} FP eval")
        if fp_cache is not None:
            fp_cache[fp_key] = fp
    t_fp = time.perf_counter() - t

    qmodel = quantize_model(model, policy).to(device)
    del model
    ctx = RunContext(device=device, seed=spec.seed, progress=progress, workdir=workdir)
    torch.manual_seed(spec.seed)
    try:  # from here on, a failed record keeps what the method warned of before the failure
        t = time.perf_counter()
        info = method.quantize(qmodel, calib, cfg, ctx)
        t_quant = time.perf_counter() - t
        missing = [p.name for p in qmodel.active_points() if not (p.enabled and p.quantizer is not None)]
        if missing:
            raise RuntimeError(
                f"method {spec.method} left {len(missing)} point(s) unquantized (e.g. {missing[0]}): "
                "every point the layer policy quantizes must have an enabled quantizer"
            )

        t = time.perf_counter()
        q = evaluate(qmodel, val, device=device, progress=progress, desc=f"{spec.run_id} eval")
        t_eval = time.perf_counter() - t
    except BaseException as e:
        e.run_warnings = list(ctx.warnings)  # type: ignore[attr-defined]  # read by failed_record
        raise
    from mgrq.config import config_dict

    return {
        "schema": records.SCHEMA,
        "id": spec.run_id,
        "hash": spec.content_hash,
        "status": "done",
        "spec": spec.to_dict(),
        "metrics": {"fp_top1": fp["top1"], "fp_top5": fp["top5"], "top1": q["top1"], "top5": q["top5"], "n_eval": int(q["n"])},
        "timings": {"total_s": time.perf_counter() - t0, "load_s": t_load, "fp_eval_s": t_fp, "quantize_s": t_quant, "eval_s": t_eval},
        "peak_mem_mb": None,  # filled by execute()
        "peak_mem_kind": None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else records.cpu_name(),
        "torch_threads": torch.get_num_threads(),
        "calibration": {"n": n_calib, "seed": calib.seed, "ids_hash": calib.ids_hash},
        "data": {"source": bundle.source, "config": bundle.data_config,
                 "eval_ids_hash": _eval_ids_hash(bundle, spec.eval_limit),
                 **({"eval_subset": EVAL_SUBSET} if spec.eval_limit is not None else {})},
        "weights": weights,  # the FP weights' file and SHA-256 (+ "timm": name.tag for timm's pretrained weights)
        "policy": {"w_bits": policy.w_bits, "a_bits": policy.a_bits, "image_bits": policy.image_bits,
                   "overrides": [list(o) for o in policy.overrides]},
        "method": {"name": spec.method, "config": config_dict(cfg), "info": info, "module": method.module,
                   "module_sha256": module_sha256(method.module)},
        "warnings": list(ctx.warnings),  # what the method noticed but did not stop for
        "versions": records.versions(),
        "git_sha": records.git_sha(),
        "host": records.host(),
        "started": started,
        "finished": records.now(),
    }


def failed_record(spec: Any, exc: BaseException, started: str) -> dict[str, Any]:
    """The record of a run that raised: the spec, the error and its traceback."""
    return {
        "schema": records.SCHEMA,
        "id": spec.run_id,
        "hash": spec.content_hash,
        "status": "failed",
        "spec": spec.to_dict(),
        "error": {
            "type": type(exc).__name__,
            "message": str(exc),
            "user_error": isinstance(exc, MGRQError),
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        },
        "warnings": list(getattr(exc, "run_warnings", [])),
        "versions": records.versions(),
        "git_sha": records.git_sha(),
        "host": records.host(),
        "started": started,
        "finished": records.now(),
    }
