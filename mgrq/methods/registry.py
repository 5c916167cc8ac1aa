"""The method registry: every PTQ method (MGRQ and the baselines) registers here the same way.

A method is a name, a frozen config dataclass, a default calibration size and a function
``quantize(qmodel, calib, cfg, ctx) -> info`` that sets and calibrates the quantizers of a
:class:`~mgrq.surgery.QuantModel` in place and returns a JSON-friendly dict for the run record.
Built-in modules are imported on first use of the registry, so ``import mgrq`` stays light,
then the modules named in ``$MGRQ_METHODS`` (comma-separated; methods of your own, outside this
package: they must be importable where the jobs run, and the record's ``git_sha`` does not cover
them, its ``method.module_sha256`` does). docs/methods.md says how to add a method.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mgrq.errors import ConfigError, UnknownNameError, first_line, unknown

PLUGINS_ENV = "MGRQ_METHODS"  # more modules to import, comma-separated: methods outside this package

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
_LOADED_BY: dict[str, str] = {}  # method -> the built-in or $MGRQ_METHODS module whose import registered it
_loaded = False


def register_method(
    name: str, config_cls: type, description: str, default_calib: int = 32
) -> Callable[[QuantizeFn], QuantizeFn]:
    """Decorator: ``@register_method("percentile", PercentileConfig, "...")`` on a quantize fn."""

    def deco(fn: QuantizeFn) -> QuantizeFn:
        from mgrq.config import check_defaults

        if name in _REGISTRY and _REGISTRY[name].quantize is not fn:
            raise ValueError(f"method {name!r} registered twice: by {_REGISTRY[name].module} and by {fn.__module__}; "
                             "expected one name per method")
        check_defaults(config_cls, f"method {name} ({fn.__module__})")
        _REGISTRY[name] = Method(name, description, config_cls, fn, default_calib, fn.__module__)
        return fn

    return deco


def plugin_modules() -> list[str]:
    """The modules named in ``$MGRQ_METHODS``."""
    return [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]


def _load_builtins() -> None:
    """Import the built-in method modules, then ``$MGRQ_METHODS``'s. A module that cannot be
    imported (or whose methods do not register: a bad config default) is one :class:`ConfigError`
    naming it; ``python -c 'import MODULE'`` shows its traceback."""
    global _loaded
    if _loaded:
        return
    plugins = plugin_modules()
    for mod in (*BUILTIN_MODULES, *plugins):
        before = dict(_REGISTRY)
        try:
            importlib.import_module(mod)
            _LOADED_BY.update({name: mod for name in _REGISTRY if name not in before})
        except Exception as e:  # ImportError, or any error the module's own code raised
            _REGISTRY.clear()  # what it registered before failing would read as "registered twice" next time
            _REGISTRY.update(before)
            sys.modules.pop(mod, None)
            where = f"${PLUGINS_ENV} module" if mod in plugins and mod not in BUILTIN_MODULES else "method module"
            raise ConfigError(f"{where} {mod}: cannot be imported ({type(e).__name__}: {first_line(e)}); expected a "
                              f"module that registers its methods (`python -c 'import {mod}'` shows the traceback)"
                              ) from e
    _loaded = True


def check_jobs_can_load(methods: list[str], where: str) -> None:
    """Every method of ``methods`` is registered by a module its job processes import too (a
    built-in one, one of ``$MGRQ_METHODS``, a submodule of one, or a module whose import
    registered it when the registry loaded them): a method registered by a script's own import
    would run here and be unknown in every job. ``ConfigError`` naming ``where`` otherwise."""
    loaded = (*BUILTIN_MODULES, *plugin_modules())
    for name in dict.fromkeys(methods):
        mod = get_method(name).module
        if name not in _LOADED_BY and not any(mod == m or mod.startswith(m + ".") for m in loaded):
            raise ConfigError(f"{where}method {name}: registered by module {mod}, which the job processes do not "
                              f"import; expected it in ${PLUGINS_ENV} (e.g. {PLUGINS_ENV}={mod}, the module "
                              "importable where the jobs run), or --executor debug (in this process)")


def module_sha256(module: str) -> str | None:
    """SHA-256 of a method module's source file (the record keeps it: a method of your own,
    outside this repository, is not covered by the record's ``git_sha``); None without a file."""
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def get_method(name: str) -> Method:
    _load_builtins()
    if name not in _REGISTRY:
        e = unknown("method", name, _REGISTRY)
        if not os.environ.get(PLUGINS_ENV):  # a method of one's own, named without its module
            e = UnknownNameError(f"{e} (a method of your own: name its module in ${PLUGINS_ENV})")
        raise e
    return _REGISTRY[name]


def all_methods() -> list[Method]:
    _load_builtins()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
