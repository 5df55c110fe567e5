"""Fixtures shared by several test modules."""

import pytest


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (each module says why it asks for it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
