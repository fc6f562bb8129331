"""A process tree read from /proc (psutil is not a dependency): its processes, their CPU seconds
and memory, and a sampler of the tree's peaks while a benchmark's child runs."""

from __future__ import annotations

import os
import threading


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages split among the processes that map them, so Ray's
    shared-memory object store is not counted once per process."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def status_bytes(pid: int) -> tuple[int, int, int]:
    """(VmRSS, VmHWM, RssAnon) of one process in bytes; zeros once it is gone. RssAnon is the
    process's private memory: RSS less the shared object-store pages and mapped files it has
    touched (a process that reads every block of the training split maps all of them)."""
    fields = {"VmRSS:": 0, "VmHWM:": 0, "RssAnon:": 0}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                name = line.split(maxsplit=1)[0]
                if name in fields:
                    fields[name] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return fields["VmRSS:"], fields["VmHWM:"], fields["RssAnon:"]


def hwm_bytes(pid: int) -> int:
    """Peak resident set size of one process (VmHWM)."""
    return status_bytes(pid)[1]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


class Sampler:
    """A process tree measured every `interval` seconds in a thread, from creation until `stop`:
    a subclass takes one sample in `_sample` and says what it found in `result`."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.result()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, float]:
        raise NotImplementedError


class TreePeaks(Sampler):
    """While a child process runs: the peak over time of the summed PSS of the processes below
    this one (the child and every Ray process it starts), the largest VmHWM of one Ray worker,
    and the CPU seconds of every process seen (each at its last sample)."""

    def __init__(self, interval: float = 0.1):
        self.peak_bytes, self.workers_hwm_bytes = 0, 0
        self._cpu: dict[int, float] = {}
        super().__init__(interval)

    def result(self) -> dict[str, float]:
        return {"peak_mb": self.peak_bytes / 2**20,
                "peak_worker_mb": self.workers_hwm_bytes / 2**20,
                "cpu_seconds": sum(self._cpu.values())}

    def _sample(self) -> None:
        me = os.getpid()
        pids = [pid for pid in descendants(me) if pid != me]
        self.peak_bytes = max(self.peak_bytes, sum(pss_bytes(pid) for pid in pids))
        for pid in pids:
            self._cpu[pid] = max(self._cpu.get(pid, 0.0), cpu_seconds(pid))
            if cmdline(pid).startswith("ray::"):
                self.workers_hwm_bytes = max(self.workers_hwm_bytes, hwm_bytes(pid))
