"""Dose tests: a private kernel cache per test session, and one torch thread per worker.

The tests run under pytest-xdist with 2 workers on 2 cores; one torch thread each avoids
oversubscription (the library never sets the thread count itself).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_kernel_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RPTDOSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "rptdose-cache"))


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
