"""Example budgets for the fuzz tests: CI-sized by default, larger with
HUBEDGE_FUZZ_SCALE (e.g. 10). The long runs are `python -m bench fuzz`."""

import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("HUBEDGE_FUZZ_SCALE", "1"))


def CI(examples: int):
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,  # hangs are bounded by the oracles' own limits and pytest-timeout
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        derandomize=True,  # CI runs are repeatable; the long runs explore
        database=None,  # nothing written into the work tree
    )
