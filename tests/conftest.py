import pytest

from comfy_host import GraphRunner, load


def pytest_configure(config):
    load()


@pytest.fixture
def graph() -> GraphRunner:
    """A fresh ComfyUI PromptExecutor (fresh node-output cache) for one test."""
    return GraphRunner()
