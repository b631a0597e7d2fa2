"""A Ray instance for the tests: on this machine, listening on loopback only.

Both settings are made here, before any test module imports Ray (which reads them
once, at import), and only for the tests' process and the Ray processes it starts:

- ``RAY_AUTH_MODE=disabled``: Ray 2.60 turns token authentication on for a new local
  instance and writes a token to ``~/.ray/auth_token``; the tests must not write into
  the home folder of a clean CI machine, and need no token while nothing listens
  beyond loopback.
- ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: Ray's single-machine mode (the default on
  macOS and Windows), in which every Ray process binds 127.0.0.1 instead of the
  machine's network address.
"""

from __future__ import annotations

import os

os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest
import ray  # after the settings above: Ray reads them when imported


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance with 2 CPUs for the module's tests, shut down after them."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture
def no_ray_instance():
    """Make sure no Ray instance is running in this process before the test."""
    if ray.is_initialized():
        ray.shutdown()
