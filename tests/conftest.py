"""Test setup: Triton kernels run in the interpreter on CPU, the hub is never contacted.

TRITON_INTERPRET is read when ``@triton.jit`` decorates a function, so it is set here, before any
headsparse module is imported.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
