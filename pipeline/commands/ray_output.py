"""Send everything Ray prints during a run to a log file, so the terminal belongs to the pipeline.

Ray writes to the terminal through four doors: its Python loggers (`ray`, `ray.data`, ...) and
the `warnings` module write to whatever `sys.stderr` is at the moment; the log lines of Ray
workers forwarded to the driver (`log_to_driver`: Ray Data, the Train controller, workers'
stdout and stderr) go to `sys.stdout`/`sys.stderr` likewise; and Ray's C++ core in the driver
process writes straight to file descriptor 2. `RayOutputToFile` swaps the two Python streams and
points descriptors 1 and 2 at the file for the duration, and hands back a stream that still
reaches the original standard output, for the pipeline's own lines.
"""

from __future__ import annotations

import io
import os
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TextIO


class RayOutputToFile(AbstractContextManager):
    """`with RayOutputToFile(path) as terminal:` everything written to stdout/stderr (Python or
    C level) goes to `path` (appended); `terminal` writes where standard output went before."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._streams = sys.stdout, sys.stderr
        self.terminal = _reachable(sys.stdout)
        self._log = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._saved_fds = [os.dup(fd) for fd in (1, 2)]
        for fd in (1, 2):
            os.dup2(self._log.fileno(), fd)
        sys.stdout = sys.stderr = self._log
        return self.terminal

    def __exit__(self, *exc) -> None:
        self._log.flush()
        sys.stdout, sys.stderr = self._streams
        for fd, saved in zip((1, 2), self._saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        self._log.close()
        if self.terminal is not self._streams[0]:
            self.terminal.flush()
            self.terminal.close()


def _reachable(stdout: TextIO) -> TextIO:
    """A stream that reaches what `stdout` reaches once descriptors 1 and 2 are redirected: the
    object itself when it is not backed by them (a test's StringIO), else a copy of its descriptor."""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, io.UnsupportedOperation):
        return stdout
    if fd not in (1, 2):
        return stdout
    return open(os.dup(fd), "w", buffering=1, encoding=getattr(stdout, "encoding", None) or "utf-8",
                errors="replace")
