"""Shared pytest fixtures."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tiny tensors on one intra-op thread: with 2 threads, synchronisation
    dominates such small work and is very slow on a busy machine. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
