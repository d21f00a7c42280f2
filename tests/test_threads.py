"""Torch threads set to the physical cores, with a warning beyond them."""

import warnings

import pytest
import torch

from lostprune import _threads


def test_physical_cores_within_the_allowed_cpus():
    cores = _threads.physical_cores()
    assert 1 <= cores <= len(_threads._allowed_cpus())


def test_set_threads_defaults_to_the_physical_cores_and_warns_beyond(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(_threads, "physical_cores", lambda: 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _threads.set_threads() == 1 and torch.get_num_threads() == 1
        with pytest.warns(UserWarning, match="torch uses 3 threads but this process has 1 physical core"):
            assert _threads.set_threads(3) == 3
        for bad in (0, -2, 1.5, True):
            with pytest.raises(ValueError, match="threads must be a positive integer"):
                _threads.set_threads(bad)
    finally:
        torch.set_num_threads(before)
