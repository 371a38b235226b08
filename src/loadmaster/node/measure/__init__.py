"""Measuring a task: memory cgroups (v1, v2) and /proc."""
