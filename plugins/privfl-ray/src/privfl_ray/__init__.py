"""privfl-ray: the ``ray`` executor, which runs client halves in Ray actors.

Install the distribution and choose the executor by name (``privfl run --executor
ray``, ``Federation(executor="ray")``) or pass an instance
(``Federation(executor=RayExecutor(address="auto"))``). The executor and what
crosses between the server and its actors are described in :mod:`privfl_ray.executor`.
"""

from __future__ import annotations

import privfl
from privfl_ray.executor import RayExecutor

__all__ = ["RayExecutor"]


@privfl.hookimpl
def privfl_register_executors() -> list[type]:
    return [RayExecutor]
