"""Kernel launches per layer type stay within a budget (counted as aten ops on torch CPU: tests/op_counts.py).

The budgets are the counts measured when this test was written (docs/gpu.md records them); a change that
adds launches to a layer fails here, and a change that removes some should lower its budget.
"""
from __future__ import annotations

import pytest

from conftest import HAS_TORCH

pytestmark = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (its profiler counts the ops)")

BUDGETS = {
    "Conv2d 3x3 forward": 14, "Conv2d 3x3 backward": 22,
    "Conv2d 3x3, first layer (no dL/dx) forward": 14, "Conv2d 3x3, first layer (no dL/dx) backward": 7,
    "Conv2d 3x3, GPU policies forward": 9, "Conv2d 3x3, GPU policies backward": 15,
    "Conv2d 1x1 forward": 2, "Conv2d 1x1 backward": 8,
    "Linear forward": 2, "Linear backward": 5,
    "BatchNorm2d forward": 18, "BatchNorm2d backward": 13,
    "ReLU forward": 3, "ReLU backward": 3,
    "MaxPool2d 2x2 forward": 6, "MaxPool2d 2x2 backward": 13,
    "Dropout forward": 5, "Dropout backward": 1,
    "CrossEntropyLoss forward": 25, "CrossEntropyLoss backward": 1,
    "SGD momentum step (one parameter)": 4, "Adam step (one parameter)": 12,
}


@pytest.fixture(scope="module")
def counts():
    from op_counts import measure

    return measure()


@pytest.mark.parametrize("case", BUDGETS)
def test_launches_stay_within_the_budget(counts, case):
    assert 0 < counts[case] <= BUDGETS[case], f"{case}: {counts[case]} launches, budget {BUDGETS[case]}"


def test_every_measured_case_has_a_budget(counts):
    assert set(counts) == set(BUDGETS)


def test_the_counter_counts_work_not_views():
    import torch
    from op_counts import launches

    x = torch.ones(4, 4)
    assert launches(lambda: x.reshape(16)[2:].view(2, 7)) == 0
    assert launches(lambda: (x + 1) * 2) == 2
    assert launches(lambda: x.t().reshape(16)) == 1               # a reshape that has to copy is a launch
