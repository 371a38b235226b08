"""Session-wide isolation: the tests' executors use their own ledger and history.

Without this, every executor in the suite would share the machine's default
node ledger (``/dev/shm/loadmaster-<uid>``) with whatever else runs here, and
write reports into the user's real history.
"""

from __future__ import annotations

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_ledger_and_history() -> object:
    with tempfile.TemporaryDirectory(prefix="lm-tests-") as d:
        old = {k: os.environ.get(k) for k in ("LOADMASTER_LEDGER", "LOADMASTER_HISTORY")}
        os.environ["LOADMASTER_LEDGER"] = os.path.join(d, "ledger")
        os.environ["LOADMASTER_HISTORY"] = os.path.join(d, "history.sqlite")
        yield
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
