"""Test setup: Triton kernels run in the interpreter on CPU, the hub is never contacted.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a function, so it is set here, before any
headsparse module is imported. Measured attention costs are cached in a temporary folder, not the
user's ``~/.cache/headsparse`` (subprocesses inherit it).
"""

import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HEADSPARSE_CACHE", tempfile.mkdtemp(prefix="headsparse-test-cache-"))
# Executor timing on first large calls (kernels/cpu_tuning) would make choices depend on the moment; tests that
# exercise it turn it on.
os.environ.setdefault("HEADSPARSE_CPU_TUNING", "0")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: they gain nothing from threads, and on a shared
    2-core machine two threads can wait on each other for milliseconds per op."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
