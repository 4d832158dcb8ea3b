"""The one shape every benchmark reports in (the README, "Benchmarks": `python -m bench`).

A figure is never printed alone: each comes with a baseline measured in the
same run on the same machine, and their ratio. ``lower_is_better`` says which
way the goal points.
"""

from __future__ import annotations

import os
import resource
import statistics
from dataclasses import asdict, dataclass


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: str  # what the baseline is, in words
    baseline_value: float
    goal: float | None = None
    lower_is_better: bool = True
    command: str = ""  # the command that reproduces this figure
    ratio_goal: float | None = None  # a goal on the ratio to the baseline instead of the value

    @property
    def ratio(self) -> float:
        if not self.baseline_value:
            return float("inf") if self.value else 1.0
        return self.value / self.baseline_value

    @property
    def ok(self) -> bool | None:
        if self.ratio_goal is not None:
            return self.ratio <= self.ratio_goal if self.lower_is_better else self.ratio >= self.ratio_goal
        if self.goal is None:
            return None
        return self.value <= self.goal if self.lower_is_better else self.value >= self.goal

    def goal_text(self) -> str:
        """'  goal ≤ 10 ms: ok', '  goal ratio ≤ 1.2: MISSED' or '' (no goal)."""
        if self.ok is None:
            return ""
        sign = "≤" if self.lower_is_better else "≥"
        target = f"ratio {sign} {self.ratio_goal:g}" if self.ratio_goal is not None else f"{sign} {self.goal:g} {self.unit}"
        return f"  goal {target}: {'ok' if self.ok else 'MISSED'}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = round(self.ratio, 4)
        d["ok"] = self.ok
        return d


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, int(p * 10) - 1)]


def rss_mb(pid: int | None = None) -> float:
    """Resident memory in MB of a process (this one by default), from /proc."""
    path = f"/proc/{pid or os.getpid()}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds consumed so far by a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
