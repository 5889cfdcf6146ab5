"""Execution: where per-example work runs, and what survives a crash.

`executor` (stages declared by the modules that define them, cut into shards,
run in process or on Ray workers (`ray`), merged in order), `store` (finished
work on disk in a data-only format: shards, report sections, certification
records), `lock` (one run per output folder). It imports no analysis.
"""
from tfgeom.execution.executor import (  # the public names every core uses
    Executor,
    LocalExecutor,
    example_rng,
    per_example,
    run,
    stage,
)

__all__ = ["Executor", "LocalExecutor", "example_rng", "per_example", "run", "stage"]
