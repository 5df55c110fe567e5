"""Scale-out on Ray (optional: ``pip install "meds[ray]"``).

One module per job, each importing Ray only when it runs, so the core install works
without it:

* :mod:`~meds.distributed.stage1` - stage 1 sharded over Ray actors (query images or
  memory images), used by ``memory_scores(workers=N)`` / ``MeDS(workers=N)``;
* :mod:`~meds.distributed.tasks` - one Ray task per category (``meds fit/audit --ray``) or
  per noise setting (``meds eval --ray``), with retries and per-task errors;
* :mod:`~meds.distributed.predict` - ``meds predict --ray``: Ray Data over an actor pool.

Workers import ``meds`` themselves: on a cluster, install the same meds on every node (or
ship it with a Ray ``runtime_env``), and keep data and run folders on a shared filesystem.
"""

from __future__ import annotations

from typing import Optional

INSTALL_HINT = 'pip install "meds[ray]"'


class RayNotInstalledError(RuntimeError):
    """``--ray`` / ``workers=`` was asked for but Ray is not importable."""


def require_ray(what: str = "this"):
    """The ``ray`` module, or :class:`RayNotInstalledError` naming the extra to install."""
    try:
        import ray  # noqa: PLC0415
        import ray.data  # noqa: F401, PLC0415 - part of the extra; fail here, not mid-run
    except ImportError:
        raise RayNotInstalledError(f"{what} needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: Optional[str] = None, what: str = "this"):
    """Ray, connected: an already initialised instance is used as it is; otherwise
    ``address`` is joined (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``), or without
    one a local instance starts (``RAY_ADDRESS`` in the environment is honoured)."""
    ray = require_ray(what)
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return ray
