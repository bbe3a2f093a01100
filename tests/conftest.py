"""Fixtures shared by every test folder.

``device``: a test that takes it runs once per available device: the CPU always, CUDA when present (so
the same tests cover the GPU on a machine that has one). Such tests carry the ``device`` marker:
``pytest -m device`` runs only them. ``FPN_TEST_DEVICES=cuda`` (a comma-separated list) restricts them
to those devices; ``scripts/gpu_check.sh`` uses it, and asking for CUDA where there is none is an error.

``one_thread``: torch single-threaded for the rest of the test module.
"""

from __future__ import annotations

import os

import pytest
import torch


def _devices() -> list[str]:
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    wanted = [d.strip() for d in os.environ.get("FPN_TEST_DEVICES", "").split(",") if d.strip()]
    missing = [d for d in wanted if d not in available]
    if missing:
        raise pytest.UsageError(f"FPN_TEST_DEVICES={','.join(wanted)}: not available here: {', '.join(missing)}")
    return wanted or available


@pytest.fixture(scope="module")
def one_thread():
    """torch runs single-threaded for the rest of the module (small tensors, or full-size models on two shared
    cores: no OpenMP oversubscription stalls; module-scoped so module-scoped fixtures can use it too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    config.addinivalue_line("markers", "device: runs once per available device (the `device` fixture)")


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", [torch.device(d) for d in _devices()], ids=str)


def pytest_collection_modifyitems(items):
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.device)
