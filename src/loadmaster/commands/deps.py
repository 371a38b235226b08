"""``loadmaster deps MODULE:FUNCTION [--pack] [--json] [--category C] [--history H]``.

Shows what a function needs and why: the modules found in its bytecode,
globals and closures (and in the user's functions it calls), what its
category's earlier runs imported (from the history), and where each comes
from: an installed distribution (name and exact version), the user's own
files (shipped as files), the standard library (never shipped), or nothing
found here. Ends with the environment's key, which every task report of that
function names (``TaskReport.extra["environment"]``); ``--pack`` packs the
wheel set now (once: it is cached by key).

The function is imported by name, so the module's top level runs, as it
would under the executor. ``MODULE`` may be a path to a ``.py`` file; its
directory is put first on ``sys.path`` (the user's own modules next to it
are found there).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

NAME = "deps"
HELP = "Show what a function needs (found, learned from runs) and its environment key."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add this subcommand's options to ``parser``."""
    parser.add_argument("function", metavar="MODULE:FUNCTION",
                        help="e.g. mypkg.tasks:align, or path/to/script.py:align")
    parser.add_argument("--category", help="the category whose learned imports count (default: the function's name)")
    parser.add_argument("--history", help="the history file to read learned imports from (default: the user's)")
    parser.add_argument("--pack", action="store_true", help="pack the wheel set now (cached by key)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _load(spec: str) -> Any:
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"loadmaster deps: {spec!r}: expected MODULE:FUNCTION (e.g. mypkg.tasks:align)")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        sys.path.insert(0, os.path.dirname(path))
        module_name = os.path.splitext(os.path.basename(path))[0]
    elif "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"loadmaster deps: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise SystemExit(f"loadmaster deps: {module_name!r} has no {attr!r}") from exc
    if not callable(obj):
        raise SystemExit(f"loadmaster deps: {spec} is not callable")
    return obj


def run(args: argparse.Namespace) -> int:
    """Print what the function needs; 0, or 1 when some module is provided by nothing here."""
    import time

    from loadmaster.deps import dists, find, pack

    fn = _load(args.function)
    category = args.category or getattr(fn, "__qualname__", "") or fn.__class__.__name__
    learned = _learned(args.history, category)
    tm = time.perf_counter()
    dists.is_users_module("loadmaster")  # reads the installed distributions' metadata, once per process
    t0 = time.perf_counter()
    found = find.find_modules(fn)
    t1 = time.perf_counter()
    needs = dists.resolve(found, tuple(learned))
    key = pack.env_key(needs)
    packed = pack.pack(needs) if args.pack else None
    out: dict[str, Any] = {
        "function": args.function, "category": category, "environment": key,
        "find_ms": round((t1 - t0) * 1e3, 2), "metadata_ms": round((t0 - tm) * 1e3, 1), "walked": found.walked,
        "modules": found.modules, "learned": learned,
        "distributions": {n: {"version": d.version, "why": d.why} for n, d in sorted(needs.dists.items())},
        "user_modules": {n: {"path": u.path, "why": u.why} for n, u in sorted(needs.user.items())},
        "stdlib": needs.stdlib, "on_every_node": needs.base, "not_found": needs.unknown,
    }
    if packed is not None:
        out["wheel_set"] = {"path": packed.path, "cached": packed.cached, "wheels": list(packed.wheels),
                            "bytes": packed.size, "digest": packed.digest, "seconds": round(packed.seconds, 3)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        _print(out)
    return 1 if needs.unknown else 0


def _learned(path: str | None, category: str) -> list[str]:
    from loadmaster.errors import HistoryError
    from loadmaster.plan.history import History
    from loadmaster.plan.history.store import default_history_path

    where = path or default_history_path()
    if not os.path.exists(where):
        return []
    try:
        with History(where) as h:
            return h.learned_imports(category)
    except HistoryError as exc:
        print(f"loadmaster deps: not reading learned imports: {exc}", file=sys.stderr)
        return []


def _print(out: dict[str, Any]) -> None:
    print(f"{out['function']} (category {out['category']}): environment {out['environment']}")
    print(f"  read the code of: {', '.join(out['walked'])} ({out['find_ms']} ms; the installed "
          f"distributions' metadata {out['metadata_ms']} ms, once per process)")
    if out["learned"]:
        print(f"  imported by earlier runs: {', '.join(out['learned'])}")
    print("  distributions (shipped as wheels):" if out["distributions"] else "  distributions: none")
    for name, d in out["distributions"].items():
        print(f"    {name}=={d['version']}  <- {d['why']}")
    if out["user_modules"]:
        print("  your modules (shipped as files):")
        for name, u in out["user_modules"].items():
            print(f"    {name}  {u['path']}  <- {u['why']}")
    if out["stdlib"]:
        print(f"  standard library (never shipped): {', '.join(out['stdlib'])}")
    if out["on_every_node"]:
        print(f"  on every node already (loadmaster's own): {', '.join(out['on_every_node'])}")
    for name, why in out["not_found"].items():
        print(f"  NOT FOUND here: {name}  <- {why}: install it, or the task fails on the node")
    ws = out.get("wheel_set")
    if ws:
        state = "already cached" if ws["cached"] else f"packed in {ws['seconds']} s"
        print(f"  wheel set: {ws['path']} ({len(ws['wheels'])} wheels, {ws['bytes'] >> 10} KiB, {state})")
        print(f"  its digest: {ws['digest']} (nodes build only from bytes that hash to it)")
