"""Engine tests run tiny problems on one intra-op thread: with two threads on a loaded 2-core
machine the reference loop's many small ops spin-wait on each other (measured 15× slower).
A test module that needs more threads overrides ``_one_thread`` (see test_reference.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
