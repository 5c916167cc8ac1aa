"""Run specs: a run is a pure function of a frozen :class:`RunSpec`. Torch-free.

A spec has a readable id (``tiny_vit.percentile.w4a4.s0``) and a content hash of every field
that can change the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mgrq.errors import ConfigError, compile_regex

_BITS_RE = re.compile(r"^[wW](\d+)[aA](\d+)$")


class FieldError(ConfigError):
    """A :class:`RunSpec` field out of range, "FIELD=VALUE: EXPECTED", keeping ``field``, ``value``
    and ``expected`` so that a front end names it as its user gave it (``quantize``: ``--w-bits 17``)."""

    def __init__(self, field: str, value: Any, expected: str):
        super().__init__(f"{field}={value!r}: {expected}")
        self.field, self.value, self.expected = field, value, expected

    def __reduce__(self) -> tuple[type, tuple[str, Any, str]]:  # pickled by submitit jobs: args are not the message
        return FieldError, (self.field, self.value, self.expected)


def parse_bits(text: str) -> tuple[int, int]:
    """``"W4A4"`` -> ``(4, 4)``; bit-widths must be 2..16."""
    m = _BITS_RE.match(str(text).strip())
    if not m:
        raise ConfigError(f"bit-width {text!r}: expected WxAy, e.g. W4A4 or w6a6")
    w, a = int(m.group(1)), int(m.group(2))
    for field, v in (("w_bits", w), ("a_bits", a)):
        if not 2 <= v <= 16:
            raise ConfigError(f"bit-width {text!r}: {field}={v}, expected 2..16")
    return w, a


def _freeze(d: dict[str, Any] | tuple | None) -> tuple[tuple[str, Any], ...]:
    if d is None:
        return ()
    items = d.items() if isinstance(d, dict) else d
    out = []
    for k, v in items:
        if isinstance(v, list):
            v = tuple(v)
        out.append((str(k), v))
    return tuple(sorted(out))


EVAL_SUBSET = "spread"  # what eval_limit keeps (records say so; older ones, without it, kept the first N)
SPLIT_NAMES = {"heldout": "held-out", "tune": "tune"}  # eval_split -> how messages and captions say it


def shape_problem(d: dict[str, Any]) -> str | None:
    """What is malformed in a spec as a record holds it (JSON: ``method_config`` an object,
    ``bits_overrides`` a list of ``[regex, bits]`` pairs), or None. Only the shapes: the values
    are :class:`RunSpec`'s to check, which names what it expects. A missing key takes its default."""
    for k, typ, nullable in (("calib", int, True), ("eval_limit", int, True), ("image_bits", int, False),
                             ("variant", str, True), ("checkpoint", str, True), ("data_root", str, True),
                             ("eval_split", str, False), ("device", str, False),
                             ("method_config", dict, True), ("bits_overrides", list, True)):
        v = d.get(k)
        if (v is None and (nullable or k not in d)) or (isinstance(v, typ) and not isinstance(v, bool)):
            continue
        expected = {int: "an integer", str: "a string", dict: "an object of field: value",
                    list: "a list of [regex, bits] pairs"}[typ]
        return f"spec.{k} is {v!r:.60}, expected {expected}" + (" or null" if nullable else "")
    if not all(isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) for x in d.get("bits_overrides") or []):
        return f"spec.bits_overrides is {d['bits_overrides']!r:.60}, expected a list of [regex, bits] pairs or null"
    return None


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines one run (one cell of a suite grid)."""

    model: str
    method: str
    w_bits: int
    a_bits: int
    seed: int = 0
    calib: int | None = None  # None: the method's default calibration size
    method_config: tuple[tuple[str, Any], ...] = ()  # overrides of the method's config fields
    variant: str | None = None  # display name (ablations); defaults to the method name
    image_bits: int = 8
    bits_overrides: tuple[tuple[str, Any], ...] = ()  # layer policy (regex, bits | "fp")
    checkpoint: str | None = None
    data_root: str | None = None
    eval_split: str = "heldout"  # "heldout" (final numbers: held-out digits, ImageNet val/) or "tune" (sweeps)
    eval_limit: int | None = None  # evaluate on N images spread over the eval set (smoke runs)
    device: str = "auto"

    def __post_init__(self) -> None:
        for f in ("w_bits", "a_bits", "image_bits"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 16:
                raise FieldError(f, v, "expected an integer bit-width in 2..16")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise FieldError("seed", self.seed, "expected a non-negative integer")
        if self.calib is not None and (not isinstance(self.calib, int) or self.calib < 1):
            raise FieldError("calib", self.calib, "expected a positive integer")
        if self.eval_split not in ("heldout", "tune"):
            raise FieldError("eval_split", self.eval_split, "expected 'heldout' or 'tune'")
        if self.eval_limit is not None and (not isinstance(self.eval_limit, int) or isinstance(self.eval_limit, bool)
                                            or self.eval_limit < 1):
            raise FieldError("eval_limit", self.eval_limit, "expected a positive integer")
        object.__setattr__(self, "method_config", _freeze(self.method_config))
        object.__setattr__(self, "bits_overrides", tuple(tuple(x) for x in self.bits_overrides))
        for pattern, _ in self.bits_overrides:
            compile_regex(str(pattern), "bits override", "REGEX=BITS, e.g. 'head=8'")

    @property
    def name(self) -> str:
        return self.variant or self.method

    @property
    def bits(self) -> str:
        return f"W{self.w_bits}A{self.a_bits}"

    @property
    def run_id(self) -> str:
        return f"{self.model}.{self.name}.w{self.w_bits}a{self.a_bits}.s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method_config"] = dict(self.method_config)
        d["bits_overrides"] = [list(x) for x in self.bits_overrides]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """The spec a record (or a suite file) holds; a :class:`ConfigError` names what is malformed."""
        bad = shape_problem(d)
        if bad:
            raise ConfigError(bad)
        d = dict(d)
        d["method_config"] = _freeze(d.get("method_config") or {})
        d["bits_overrides"] = tuple(tuple(x) for x in d.get("bits_overrides") or ())
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"run spec: unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}")
        return cls(**d)

    @property
    def content_hash(self) -> str:
        """Hash of the fields that can change the result (``device`` excluded)."""
        d = self.to_dict()
        d.pop("device")
        if d["eval_limit"] is not None:  # N images spread over the set (mgrq.run.eval_subset), no
            d["eval_subset"] = EVAL_SUBSET  # longer the first N: such cells of older labels run again
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]
