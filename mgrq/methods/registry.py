"""The method registry: every PTQ method (MGRQ and the baselines) registers here the same way.

A method is a name, a frozen config dataclass, a default calibration size and a function
``quantize(qmodel, calib, cfg, ctx) -> info`` that sets and calibrates the quantizers of a
:class:`~mgrq.surgery.QuantModel` in place and returns a JSON-friendly dict for the run record.
Built-in modules are imported on first use of the registry, so ``import mgrq`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mgrq.errors import ConfigError, unknown

# Modules that register built-in methods when imported (add new methods here).
BUILTIN_MODULES: tuple[str, ...] = (
    "mgrq.methods.percentile",
    "baselines.repq_vit",
    "baselines.ptq4vit",
    "baselines.brecq",
    "mgrq.methods.mgrq",
)


@dataclass
class RunContext:
    """What a method may use besides the model and the calibration data."""

    device: Any  # torch.device
    seed: int = 0
    progress: bool = True
    workdir: str | None = None  # a folder for resumable state (checkpoints of long methods)
    # what the method noticed but did not stop for (the run record's ``warnings``)
    warnings: list[str] = field(default_factory=list)


class QuantizeFn(Protocol):
    def __call__(self, qmodel: Any, calib: Any, cfg: Any, ctx: RunContext) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    config_cls: type
    quantize: QuantizeFn
    default_calib: int
    module: str

    def make_config(self, overrides: dict[str, Any] | None = None) -> Any:
        from mgrq.config import build_config

        return build_config(self.config_cls, overrides, self.name)


def run_calib(spec: Any) -> int:
    """The calibration images a run draws: its ``calib``, else its method's default."""
    return spec.calib if spec.calib is not None else get_method(spec.method).default_calib


def check_init_calib(spec: Any, where: str) -> None:
    """A reconstruction method's ``init_calib`` given beyond the run's calibration images is an
    error before any work (:class:`ConfigError` naming ``where``), not a silent "all of them": the
    record would claim more images than the initial quantizers saw. Its default is not checked
    (the first N of however many there are)."""
    n = dict(spec.method_config).get("init_calib")
    calib = run_calib(spec)
    if isinstance(n, int) and n > calib:
        src = "calib" if spec.calib is not None else f"{spec.method}'s default calib"
        raise ConfigError(f"{where}init_calib={n}: more than the {calib} calibration images of the run ({src}); "
                          f"expected at most {calib} (the first N of them), or 0 for all")


_REGISTRY: dict[str, Method] = {}
_loaded = False


def register_method(
    name: str, config_cls: type, description: str, default_calib: int = 32
) -> Callable[[QuantizeFn], QuantizeFn]:
    """Decorator: ``@register_method("percentile", PercentileConfig, "...")`` on a quantize fn."""

    def deco(fn: QuantizeFn) -> QuantizeFn:
        if name in _REGISTRY and _REGISTRY[name].quantize is not fn:
            raise ValueError(f"method {name!r} registered twice")
        _REGISTRY[name] = Method(name, description, config_cls, fn, default_calib, fn.__module__)
        return fn

    return deco


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for mod in BUILTIN_MODULES:
            importlib.import_module(mod)
        _loaded = True


def get_method(name: str) -> Method:
    _load_builtins()
    if name not in _REGISTRY:
        raise unknown("method", name, _REGISTRY)
    return _REGISTRY[name]


def all_methods() -> list[Method]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
