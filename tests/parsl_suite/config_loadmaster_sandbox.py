"""Parsl test-suite config: the only executor is LoadmasterExecutor, each task sandboxed.

As ``config_loadmaster.py``, with loadmaster's default sandbox (private
``/tmp``, Landlock file rules; Parsl's declared inputs readable, the
directories of its outputs and std streams writable).
"""

from __future__ import annotations

from parsl.config import Config

from loadmaster.parsl import LoadmasterExecutor


def fresh_config() -> Config:
    return Config(executors=[LoadmasterExecutor(label="loadmaster", sandbox=True)])
