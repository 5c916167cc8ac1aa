"""The block-reconstruction engine shared by BRECQ, QDrop and MGRQ (see :mod:`.engine`).

Public pieces: :class:`Reconstructor`, :class:`Stage`, :class:`ReconConfig`, the loss-term hook
(:class:`LossTerm`, :class:`StepContext`, :class:`UnitRecon`) and the built-in terms.
"""

from mgrq.recon.config import ReconConfig, Stage
from mgrq.recon.engine import Reconstructor, TermFactory, UnitRecon, no_drop, points_off, tap_hooks
from mgrq.recon.losses import (
    FisherError,
    LogitKL,
    LossTerm,
    OutputError,
    StepContext,
    channel_error,
    logit_kl,
)

__all__ = [
    "FisherError", "LogitKL", "LossTerm", "OutputError", "ReconConfig", "Reconstructor", "Stage",
    "StepContext", "TermFactory", "UnitRecon", "channel_error", "logit_kl", "no_drop", "points_off",
    "tap_hooks",
]
