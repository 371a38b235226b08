"""Print, as JSON, where this user's cgroup v2 task slots would go in a prepared tree.

Usage: python v2_parent.py PROC_ROOT CGROUP_ROOT (tests/test_cgroup_delegation.py)
"""

from __future__ import annotations

import json
import sys

from loadmaster.node.measure.cgroup_slots import v2_parent

if __name__ == "__main__":
    print(json.dumps(v2_parent(proc_root=sys.argv[1], cgroup_root=sys.argv[2])))
