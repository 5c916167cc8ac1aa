"""The suite runner: suite files -> frozen run specs -> cells run through submitit executors
(local, debug, slurm) -> run records on disk -> MLflow mirror -> reports.

Modules: ``suite`` (YAML -> :class:`~mgrq.runner.suite.Suite` -> specs), ``layout`` (run
folders, labels), ``executors`` (options, site profiles), ``jobs`` (what runs inside a job),
``driver`` (submit, wait, summarize), ``commands`` (the ``mgrq suite|mirror|report`` CLI).
Nothing here is imported by ``import mgrq``; submitit is imported only when jobs are built.
"""
