"""Test harnesses for clusters on one machine: a real Slurm, emulated network nodes.

Used by the test tiers (``slurm``, ``netnodes``) and by benches in ``bench/``; they
start real daemons, namespaces and processes, and skip with the reason where the
machine refuses (not root, no ``ip netns``, no Slurm packages).
"""
