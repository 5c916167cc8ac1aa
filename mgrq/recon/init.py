"""Initial quantizers of a reconstruction, from calibration, chosen by name.

- ``percentile``: :mod:`mgrq.methods.percentile` (RepQ-ViT's quantizers and search without the
  reparameterization; the weight and activation searches are configurable, BRECQ's 80-step
  L2.4 shrink search being ``lp``).
- ``repq_vit``: the registered ``repq_vit`` method (RepQ-ViT's full calibration, including its
  scale reparameterization of the LayerNorm -> Linear pairs), run with its default config.

Both run on the first ``n`` calibration images (the reconstruction itself uses all of them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mgrq.data import Calibration
from mgrq.errors import ConfigError, UnknownNameError
from mgrq.surgery import QuantModel

INITS = ("percentile", "repq_vit")
PERCENTILE_ONLY = {"weight_init": "percentile", "act_init": "percentile", "softmax_quantizer": "log_sqrt2"}


def check_start_fields(cfg: Any) -> None:
    """The fields every reconstruction method's config shares (``init``, ``init_calib``,
    ``weight_init``, ``act_init``, ``softmax_quantizer``, ``iters``), ``ValueError`` naming the
    field. ``weight_init``, ``act_init`` and ``softmax_quantizer`` only apply to
    ``init=percentile``, ``fisher_damping`` to ``block_loss=fisher``: they are refused otherwise
    instead of ignored (the record would claim them)."""
    from mgrq.methods.percentile import INITS as PERCENTILE_SEARCHES
    from mgrq.methods.percentile import check_softmax_quantizer

    if cfg.init not in INITS:
        raise ValueError(f"init={cfg.init!r}: expected one of {', '.join(INITS)}")
    for f in ("weight_init", "act_init"):
        if getattr(cfg, f) not in PERCENTILE_SEARCHES:
            raise ValueError(f"{f}={getattr(cfg, f)!r}: expected one of {', '.join(PERCENTILE_SEARCHES)}")
    check_softmax_quantizer(cfg.softmax_quantizer)
    if cfg.iters < 1:
        raise ValueError(f"iters={cfg.iters}: expected iters >= 1")
    if cfg.init_calib < 0:
        raise ValueError(f"init_calib={cfg.init_calib}: expected init_calib >= 0")
    refuse_idle(cfg, tuple(PERCENTILE_ONLY), cfg.init == "percentile", "init='percentile'",
                f"init={cfg.init!r} sets its own quantizers")
    refuse_idle(cfg, ("fisher_damping",), cfg.block_loss == "fisher", "block_loss='fisher'",
                f"block_loss={cfg.block_loss!r} here")


def refuse_idle(cfg: Any, names: tuple[str, ...], used: bool, needs: str, why: str) -> None:
    """``ValueError`` when fields that only act under ``needs`` (``used`` is false: they would be
    ignored) differ from their defaults: the record and the cell's hash would claim a setting the
    run never applied, and a sweep over it would show "no effect"."""
    if used:
        return
    defaults = {f.name: f.default for f in dataclasses.fields(cfg)}
    changed = [f"{k}={getattr(cfg, k)!r}" for k in names if getattr(cfg, k) != defaults[k]]
    if changed:
        raise ValueError(f"{', '.join(changed)}: only used with {needs}; {why}, so the run would ignore "
                         f"{'it' if len(changed) == 1 else 'them'} (leave {'it' if len(changed) == 1 else 'them'} "
                         "at the default)")


def calibration_head(calib: Calibration, n: int) -> Calibration:
    """The first ``n`` images of ``calib`` (all of them when ``n`` is 0 or larger)."""
    if n <= 0 or n >= len(calib.ids):
        return calib
    from mgrq.data import hash_ids

    ids = list(calib.ids[:n])
    return dataclasses.replace(calib, images=calib.images[:n], labels=calib.labels[:n], ids=ids, ids_hash=hash_ids(ids))


def initial_quantizers(
    qmodel: QuantModel, calib: Calibration, init: str, n: int, ctx: Any,
    weight_init: str = "percentile", act_init: str = "percentile", softmax_quantizer: str = "log_sqrt2",
) -> dict[str, Any]:
    """Set and calibrate every active point's quantizer with the ``init`` method on the first
    ``n`` calibration images. Returns ``{"method", "images", "info"}`` for the run record."""
    from mgrq.methods import registry

    head = calibration_head(calib, n)
    if init == "percentile":
        from mgrq.methods.percentile import PercentileConfig
        from mgrq.methods.percentile import quantize as percentile

        cfg = PercentileConfig(weight_init=weight_init, act_init=act_init, softmax_quantizer=softmax_quantizer)
        info = percentile(qmodel, head, cfg, ctx)
        from mgrq.config import config_dict

        return {"method": "percentile", "images": len(head.ids), "config": config_dict(cfg), "info": info}
    if init == "repq_vit":
        try:
            method = registry.get_method("repq_vit")
        except UnknownNameError:
            raise ConfigError(
                "init='repq_vit': the repq_vit method is not registered (baselines/repq_vit.py); "
                "use init='percentile' or install a version that has it"
            ) from None
        cfg = method.make_config({})
        info = method.quantize(qmodel, head, cfg, ctx)
        from mgrq.config import config_dict

        return {"method": "repq_vit", "images": len(head.ids), "config": config_dict(cfg), "info": info}
    raise ConfigError(f"init={init!r}: expected one of {', '.join(INITS)}")
