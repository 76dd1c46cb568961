"""A sweep's time left, from each job's epoch pace and the number of jobs that run at once (not elapsed / jobs done
x jobs left, which a slow cell run first makes wrong by hours).

A running job has `seconds_per_epoch x epochs left` to go (its own progress file, nc.train.progress); a job not
started yet (or that has written no progress) needs `pace x epochs`, the pace of its own cell if any job of that
cell has reported one, else the median of the paces known. The jobs are then scheduled as the executors start
them: each waiting job, in order, on the first of `slots` to free up (greedy list scheduling); the time left is
when the last one ends (the makespan).
"""
from __future__ import annotations

import heapq
import statistics


def makespan(running: list[float], waiting: list[float], slots: int) -> float:
    """Seconds until every job has ended: `running` jobs' seconds left hold a slot each (all of them, if more run
    than `slots`), each `waiting` job (seconds it takes, in start order) starts on the first slot to free up."""
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    free = sorted(max(0.0, float(s)) for s in running)
    free += [0.0] * max(0, slots - len(free))
    heapq.heapify(free)
    for seconds in waiting:
        heapq.heappush(free, heapq.heappop(free) + max(0.0, float(seconds)))
    return max(free, default=0.0)


def paces(reported) -> dict:
    """{cell: seconds per epoch}: the median of the paces reported by each cell's jobs, from (cell, seconds per
    epoch) pairs (None or 0 are left out: no epoch timed yet)."""
    by_cell = {}
    for cell, pace in reported:
        if pace:
            by_cell.setdefault(cell, []).append(float(pace))
    return {cell: statistics.median(known) for cell, known in by_cell.items()}


def time_left(running: list[tuple], waiting: list[tuple], slots: int, cell_paces: dict) -> float | None:
    """Seconds left in a sweep, or None while no job has reported a pace.

    running: (cell, epochs, progress dict or None) per running job; waiting: (cell, epochs) per job not started,
    in start order; cell_paces: {cell: seconds per epoch} (see `paces`)."""
    if not cell_paces:
        return None
    fallback = statistics.median(cell_paces.values())

    def whole(cell, epochs):
        return cell_paces.get(cell, fallback) * epochs

    def rest(cell, epochs, info):
        if info and info.get("status", "running") != "running":
            return 0.0  # complete or diverged: ending now
        if info and info.get("seconds_per_epoch"):
            return info["seconds_per_epoch"] * (info["epochs"] - info["epoch"])
        return whole(cell, epochs)

    return makespan([rest(*r) for r in running], [whole(*w) for w in waiting], slots)
