"""Heavy driver imports paid while the driver waits for Ray to start.

On the 2-core machine `import torch` costs 2.5-3 s in every process, and the first torch optimizer
a process builds imports `torch._dynamo`, 2.5 s more: train spent 5-7 s of a smoke run's 15 s
of stages importing. `ray.init` is mostly waiting on the processes it spawns, so a background
thread imports what the run's stages will import in the driver (`Stage.driver_imports`) during
it: those of the first stage that computes and every stage after it, not of the cached ones
before it (an evaluate-only rerun joined to a cluster: 13.1 -> 10.7 s without train's torch).
Measured on smoke: train 6.9 -> 1.8 s, Ray's start 5.1 -> 7.7 s, the run 24.7 -> 22.3 s.

It only moves work earlier: a stage that reaches an import first waits on the module's lock and
then finds it done, as it would have paid it anyway. (Warming the Ray workers for evaluate's
torch import the same way was tried and dropped: Ray hands queued tasks of one function to the
worker it already leased, so one task per CPU warmed one worker, not each. Having every earlier
stage's tasks start the import in the background was tried too: on smoke, evaluate fell 3.4 ->
1.8 s, but ingest, featurize and train slowed by more, sharing 2 cores with it: the run over its
floor went 1.63x -> 1.73x.)
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

