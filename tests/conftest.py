"""Shared pytest fixtures (plain model and data helpers live in tests/models.py)."""

import os
import sys

import pytest
import torch

# tests/models.py and tests/reference.py import as top-level modules under any import mode
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny tensors on one intra-op thread: with 2 threads, synchronisation
    dominates such small work and is very slow on a busy machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def plt():
    """``matplotlib.pyplot`` on the headless Agg backend; every figure is closed after the test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    yield pyplot
    pyplot.close("all")
