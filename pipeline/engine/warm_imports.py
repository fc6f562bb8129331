"""Heavy driver imports paid while the driver waits for Ray to start.

`import torch` costs seconds in every process, and the first torch optimizer a process builds
imports `torch._dynamo`, as costly again. `ray.init` is mostly waiting on the processes it spawns,
so a background thread imports what the run's stages will import in the driver
(`Stage.driver_imports`) during it: those of the first stage that computes and every stage after
it, not of the cached ones before it.

It only moves work earlier: a stage that reaches an import first waits on the module's lock and
then finds it done, as it would have paid it anyway. The Ray workers are not warmed this way: Ray
hands queued tasks of one function to the worker it already leased, so one task per CPU would warm
one worker, not each; and an import started in the background of every stage's tasks would take
CPU from the stages' own work.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable


def _import_all(modules: tuple[str, ...]) -> None:
    for module in modules:
        importlib.import_module(module)


def import_in_background(modules: Iterable[str]) -> None:
    """Import `modules` in a daemon thread of this process (an import the main thread starts
    meanwhile waits on the module's lock, then finds it done)."""
    modules = tuple(dict.fromkeys(modules))
    if modules:
        threading.Thread(target=_import_all, args=(modules,), name="raypipe-warm-imports",
                         daemon=True).start()

