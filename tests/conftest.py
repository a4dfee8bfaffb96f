import pytest

from comfy_host import GraphRunner, load


def pytest_configure(config):
    load()


@pytest.fixture
def fresh_dynamo():
    """A clean dynamo for a test that counts compiled graphs (opt in with ``pytest.mark.usefixtures``)."""
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


@pytest.fixture
def graph() -> GraphRunner:
    """A fresh ComfyUI PromptExecutor (fresh node-output cache) for one test."""
    return GraphRunner()


def pytest_sessionstart(session):
    # The models under test are tiny: one thread avoids oversubscribing CI's 2 cores (measured ~10x faster here).
    import torch

    torch.set_num_threads(1)
