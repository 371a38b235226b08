"""How a node stages a declared file from the submitter's path on the same host: the cheapest safe way.

Measures, per method, the seconds to get a file into a cache directory on the
same file system and be sure of its digest (what ``data/cache.py`` must do
before an entry becomes visible):

* ``copy+hash``: one pass, read / hash / write in 1 MiB chunks (what the cache does);
* ``copy_file_range, then hash``: an in-kernel copy, then a read of the copy to hash it;
* ``reflink (FICLONE), then hash``: only where the file system has it (not ext4);
* ``hardlink, then hash``: the cheapest, and NOT safe: an edit in place of the
  user's file later changes the cached entry under its old name (shown).

Writes JSON to stdout (and ``--out``). Run under ``flock /tmp/lm-bench.lock``.

    python bench/data_stage.py --size-mib 256 --repeat 5
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from loadmaster.data.cache import copy_hashing
from loadmaster.data.digest import hash_file

FICLONE = 0x40049409


def copy_file_range(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        left = os.fstat(fin.fileno()).st_size
        while left:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), left)
            if n == 0:
                break
            left -= n


def reflink(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default="/var/tmp")
    ap.add_argument("--out")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="lm-bench-data-", dir=args.dir)
    src = os.path.join(root, "src.bin")
    with open(src, "wb") as fh:
        for _ in range(args.size_mib):
            fh.write(os.urandom(1 << 20))
    methods = {
        "copy+hash": lambda d: copy_hashing(src, d),
        "copy_file_range, then hash": lambda d: (copy_file_range(src, d), hash_file(d)),
        "reflink (FICLONE), then hash": lambda d: (reflink(src, d), hash_file(d)),
        "hardlink, then hash (unsafe)": lambda d: (os.link(src, d), hash_file(d)),
    }
    results: dict[str, object] = {}
    for name, fn in methods.items():
        times = []
        try:
            for i in range(args.repeat):
                dst = os.path.join(root, f"dst-{i}")
                t0 = time.perf_counter()
                fn(dst)
                times.append(time.perf_counter() - t0)
                os.unlink(dst)
        except OSError as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if os.path.lexists(dst):
                os.unlink(dst)
            continue
        med = statistics.median(times)
        results[name] = {"median_s": round(med, 4), "mib_per_s": round(args.size_mib / med, 1),
                         "runs": [round(t, 4) for t in times]}
    # Why a hard link is not safe: the user edits the file in place; the "cached" copy changes with it.
    link = os.path.join(root, "linked")
    os.link(src, link)
    before = hash_file(link)
    with open(src, "r+b") as fh:
        fh.write(b"edited in place")
    results["hardlink after an edit in place of the source"] = {"cached entry changed": hash_file(link) != before}
    for n in os.listdir(root):
        os.unlink(os.path.join(root, n))
    os.rmdir(root)
    doc = {"size_mib": args.size_mib, "repeat": args.repeat, "dir": args.dir, "results": results}
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
