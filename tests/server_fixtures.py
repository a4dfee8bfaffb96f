"""The ``comfy_server`` fixture: one real ComfyUI server process per pytest session, shared by every module that
imports this fixture (``from server_fixtures import comfy_server``), stopped when the session ends.

A session-scoped fixture imported into several modules is a separate fixture definition in each of them, so the
server itself is kept here, module-global, and its shutdown is registered once on the pytest config.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile

import pytest
from comfy_server import ComfyServer

_server: ComfyServer | None = None
_failure: BaseException | None = None


def shared_server(config: pytest.Config) -> ComfyServer:
    global _server, _failure
    if _failure is not None:
        raise _failure  # don't wait for a second timeout in the next module
    if _server is None:
        base = tempfile.mkdtemp(prefix="fastlane-comfy-server-")
        server = ComfyServer(base)
        try:
            server.start()
        except BaseException as e:
            _failure = e
            raise
        _server = server

        def stop() -> None:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)

        config.add_cleanup(stop)
        atexit.register(server.stop)  # should the session end without its cleanup (stop() is idempotent)
    return _server


@pytest.fixture(scope="session")
def comfy_server(request: pytest.FixtureRequest) -> ComfyServer:
    """The running ComfyUI server (127.0.0.1, random free port, private base directory, --cpu)."""
    return shared_server(request.config)
