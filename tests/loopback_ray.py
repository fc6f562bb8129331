"""A real two-node Ray cluster on this machine: two `ray start --block` processes (a head with the
dashboard and job server, and a worker node), one CPU each, with token auth on.

Each node gets its own free ports and the cluster its own temp dir and token, so it can run
beside another Ray (the test session's own). It is stopped by the ids of the processes it started
(their process groups), never by `ray stop`, which would end every Ray of this user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."
_START_S = 120
_STOP_S = 5  # a throwaway cluster: no need to wait for a graceful drain
_OBJECT_STORE_BYTES = 256 * 2**20


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def without_ray_or_aws(environ: dict[str, str]) -> dict[str, str]:
    """An environment with no Ray address, auth mode or token, and no AWS credentials, to start
    from: the test session's own Ray and the developer's AWS setup must not leak in."""
    return {k: v for k, v in environ.items()
            if not k.startswith(("RAY_", "AWS_")) and k != "PYTHONPATH"}


class LoopbackRayCluster:
    """`with LoopbackRayCluster(env) as cluster:` head and worker node up and registered;
    `cluster.address` (GCS host:port), `cluster.dashboard` (job server URL) and
    `cluster.client_env` (what a driver or `ray job submit` needs: the auth mode and token)."""

    def __init__(self, node_env: dict[str, str]) -> None:
        self.token = secrets.token_hex(32)
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.node_env = {**node_env, **self.client_env, "RAY_USAGE_STATS_ENABLED": "0",
                         "PYTHONUNBUFFERED": "1"}
        # short: Ray's unix socket paths live under it
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rpc-", dir="/tmp"))
        gcs, dashboard = free_ports(2)
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> LoopbackRayCluster:
        try:
            gcs_port, dashboard_port = self.address.rsplit(":")[1], self.dashboard.rsplit(":")[2]
            self._start("head", "--head", "--port", gcs_port, "--node-ip-address", "127.0.0.1",
                        "--temp-dir", str(self.temp_dir / "head"), "--include-dashboard", "true",
                        "--dashboard-host", "127.0.0.1", "--dashboard-port", dashboard_port,
                        "--ray-client-server-port", str(free_ports(1)[0]))
            # its own temp dir, as on another machine: Ray keeps each job's working-dir copy
            # and the address file there, and a shared one would be deleted or overwritten
            self._start("worker", "--address", self.address,
                        "--temp-dir", str(self.temp_dir / "worker"))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, name: str, *args: str) -> None:
        agent, agent_grpc, runtime_env_agent, metrics = free_ports(4)
        log = self.temp_dir / f"{name}.out"
        with open(log, "w") as out:
            process = subprocess.Popen(
                [RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                 "--object-store-memory", str(_OBJECT_STORE_BYTES),
                 "--dashboard-agent-listen-port", str(agent),
                 "--dashboard-agent-grpc-port", str(agent_grpc),
                 "--runtime-env-agent-port", str(runtime_env_agent),
                 "--metrics-export-port", str(metrics), *args],
                env=self.node_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        # `ray start` prints this once its node is registered with the GCS
        deadline = time.monotonic() + _START_S
        while STARTED not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        for process in reversed(self.processes):
            _end_group(process, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=_STOP_S)
            except subprocess.TimeoutExpired:
                pass
            _end_group(process, signal.SIGKILL)  # what is left of that node's processes
            process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _end_group(process: subprocess.Popen, sig: int) -> None:
    """Signal the process group this fixture created for one `ray start` (its node's processes)."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
