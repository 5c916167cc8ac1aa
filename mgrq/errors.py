"""Errors that name what was wrong and what was expected.

Every error a user can cause (bad config, bad data folder, corrupt checkpoint, unknown name,
NaN during reconstruction) is an :class:`MGRQError`. The CLI prints its message on one line and
exits non-zero; nothing else is caught.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class MGRQError(Exception):
    """Base class of user-facing errors (one line, names the field/path and the expectation)."""


class ConfigError(MGRQError, ValueError):
    """A config field, suite file or CLI flag has a value outside what is expected."""


class DataError(MGRQError, ValueError):
    """A data folder is missing or does not have the expected layout."""


class CheckpointError(MGRQError, ValueError):
    """A weights file is missing, corrupt or does not fit the model."""


class UnknownNameError(MGRQError, KeyError):
    """An unknown model, method or suite name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class EvaluationError(MGRQError, RuntimeError):
    """A model gave NaN or Inf outputs during evaluation: its accuracy would be meaningless."""


class ReconstructionError(MGRQError, RuntimeError):
    """A reconstruction diverged (NaN/Inf loss): names the unit and the iteration."""


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest of ``known`` to a misspelt field ``name``, else ``""``
    (:func:`unknown` gives up to three, for names)."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fold(name: str) -> str:
    return re.sub(r"[\s-]+", "_", str(name).strip().lower())


def close_names(name: str, known: Iterable[str]) -> list[str]:
    """Up to 3 of ``known`` that ``name`` may have meant (compared as :func:`unknown` does)."""
    folded: dict[str, list[str]] = {}
    for k in sorted(known):
        folded.setdefault(_fold(k), []).append(k)
    if _fold(name) in folded:
        return folded[_fold(name)]
    return [k for c in difflib.get_close_matches(_fold(name), list(folded), n=3, cutoff=0.5) for k in folded[c]][:3]


def unknown(kind: str, name: str, known: Iterable[str], where: str = "") -> UnknownNameError:
    """Build an 'unknown X' error with a did-you-mean hint and the list of known names
    (``where``, e.g. ``"of suite demo"``, follows the name). Names are compared without case,
    and with ``-`` and spaces read as ``_`` (``RepQ-ViT`` -> ``repq_vit``)."""
    known = sorted(known)
    close = close_names(name, known)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    at = f" {where}" if where else ""
    return UnknownNameError(f"unknown {kind} {name!r}{at}.{hint} Known {kind}s: {', '.join(known) or 'none'}")


def compile_regex(pattern: str, what: str, expected: str) -> re.Pattern[str]:
    """``pattern`` compiled, or a ``ConfigError`` "WHAT 'PATTERN': not a valid regular expression
    (why); expected EXPECTED" for a user-given regex (a flag, a suite field, a config field)."""
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"{what} '{pattern}': not a valid regular expression ({e}); expected {expected}") from None


def first_line(e: BaseException | str, limit: int = 160, empty: str = "") -> str:
    """The first line of an exception's message (or of a string) for a one-line error: cut at a
    word boundary with an ellipsis when longer than ``limit`` characters; ``empty`` when there is
    none."""
    line = (str(e).strip().splitlines() or [empty])[0]
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else line[:limit]).rstrip(" ,;:") + "…"
