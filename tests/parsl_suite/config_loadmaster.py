"""Parsl test-suite config: the only executor is LoadmasterExecutor, sandbox off.

Read by Parsl's own conftest (``--config``), which calls ``fresh_config()``;
run by ``scripts/parsl-suite.sh``. The history and ledger go where the script's
``LOADMASTER_HISTORY`` and ``LOADMASTER_LEDGER`` say.
"""

from __future__ import annotations

from parsl.config import Config

from loadmaster.parsl import LoadmasterExecutor


def fresh_config() -> Config:
    return Config(executors=[LoadmasterExecutor(label="loadmaster", sandbox=False)])
