"""Methods: the protocol and registry (:mod:`.registry`), the basic ``percentile`` method, MGRQ."""

from mgrq.methods.registry import Method, RunContext, all_methods, get_method, register_method

__all__ = ["Method", "RunContext", "all_methods", "get_method", "register_method"]
