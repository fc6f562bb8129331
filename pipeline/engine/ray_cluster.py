"""Joining the configured Ray cluster, or starting a local one."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pipeline.core.config import ClusterConfig

ARROW_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
_CONNECTED = []  # non-empty once ensure_ray has connected this process (disconnect_ray undoes it)

# By default Ray retries a cluster's GCS many times, each try at an address where nothing listens
# waiting long, so a mistyped address or a missing token would hang for minutes. A reachable head
# answers the first try; a few more cover a head that is still starting.
_CONNECT_TRIES = "5"
_PORT_CHECK_S = 3.0
TOKEN_HELP = ("Ray 2.60 clusters use token auth: give this process RAY_AUTH_MODE=token and the "
              "cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN (see cluster/README.md)")


class ClusterUnreachable(ConnectionError):
    """`cluster.address` names no Ray cluster this process can join; the message says why."""


def ensure_ray(cluster: ClusterConfig, ship: Sequence[str] = ()) -> None:
    """Join the configured Ray cluster, or start a local one; only called when a stage really
    runs. Joining a cluster, the folders in `ship` (a team's code) go to every node with the
    job's runtime_env (`py_modules`); a local Ray's workers read them where they are."""
    import ray

    if ray.is_initialized():
        return
    # pyarrow's default allocator keeps freed memory per worker; the system one returns it
    options = {"include_dashboard": False, "log_to_driver": True}
    if cluster.address or cluster.runtime_env:
        runtime_env = dict(cluster.runtime_env)
        runtime_env["env_vars"] = {**ARROW_ENV, **runtime_env.get("env_vars", {})}
        if cluster.address and ship:
            runtime_env["py_modules"] = [*runtime_env.get("py_modules", []), *ship]
        options["runtime_env"] = runtime_env
    if cluster.address:
        _join(cluster.address, options)
    else:
        # A local Ray's workers inherit this process's environment. Without a job runtime_env,
        # the workers the raylet prestarts (one per CPU) take the first tasks at once; with one,
        # the first tasks wait for new workers to start.
        with _environment_all(ARROW_ENV):
            ray.init(num_cpus=cluster.num_cpus, **options)
    _CONNECTED.append(True)


def workers_are_local(cluster: ClusterConfig) -> bool:
    """Every Ray worker of this run is on this machine: no cluster address, and the Ray this
    process started (or found started) has one node, this one."""
    import ray

    if cluster.address:
        return False
    nodes = [node for node in ray.nodes() if node["Alive"]]
    return len(nodes) == 1 and nodes[0]["NodeID"] == ray.get_runtime_context().get_node_id()


def _join(address: str, options: dict) -> None:
    """`ray.init(address)`, failing within seconds with one sentence instead of Ray's retries
    and traceback."""
    import ray

    _check_listening(address)
    with _environment("RAY_gcs_server_port_wait_time_s", _CONNECT_TRIES):
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            raise ClusterUnreachable(f"cannot join the Ray cluster at {address} (cluster.address): "
                                     f"{_why(exc)}. {TOKEN_HELP}") from exc


def _check_listening(address: str) -> None:
    """Fail at once when nothing listens at a HOST:PORT address ("auto" and others: Ray's job)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_PORT_CHECK_S).close()
    except OSError as exc:
        raise ClusterUnreachable(
            f"cannot join the Ray cluster at {address} (cluster.address): nothing answers there "
            f"({exc.strerror or type(exc).__name__}); is the head up (`ray start --head "
            f"--port {port}`)? {TOKEN_HELP}") from None


def _why(exc: BaseException) -> str:
    """What went wrong, from Ray's exception chain (its messages are tracebacks)."""
    texts = []
    while exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    text = "\n".join(texts)
    if not any(word in text for word in ("AuthenticationError", "InvalidAuthToken",
                                         "Unauthenticated")):
        return f"Ray gave up ({texts[0].splitlines()[0]})"
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return "it wants a token, and this process sends none (RAY_AUTH_MODE is not token)"
    return "it refused this process's token (none found, or not the cluster's)"


@contextmanager
def _environment(name: str, default: str) -> Iterator[None]:
    """`name` set to `default` for the block unless the user set it (Ray reads it from os.environ)."""
    if name in os.environ:
        yield
        return
    os.environ[name] = default
    try:
        yield
    finally:
        os.environ.pop(name, None)


@contextmanager
def _environment_all(defaults: dict[str, str]) -> Iterator[None]:
    """Every variable of `defaults` set for the block unless the user set it."""
    with contextlib.ExitStack() as stack:
        for name, value in defaults.items():
            stack.enter_context(_environment(name, value))
        yield


def disconnect_ray() -> None:
    """End the connection `ensure_ray` made (stopping a local Ray it started); a Ray the caller
    started itself is left alone."""
    import ray

    if _CONNECTED and ray.is_initialized():
        shutdown_ray()
    _CONNECTED.clear()


def shutdown_ray() -> None:
    """`ray.shutdown()`, quicker for a Ray this process started (see below)."""
    import ray

    _stop_autoscaler_monitor()
    ray.shutdown()


def _stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of a Ray this process started, before `ray.shutdown`.

    Ray stops its processes one after the other, the GCS before the monitor, whose SIGTERM
    handler then tries to report to the stopped GCS until Ray kills it, which is most of
    shutdown's time. The monitor of a local, single-node Ray autoscales nothing, so it is killed
    first, by its process handle (Ray 2.60's private `_global_node`; on another version this
    does nothing and shutdown takes its usual time).
    """
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    processes = getattr(node, "all_processes", {}) if getattr(node, "head", False) else {}
    for info in processes.get("monitor", []):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            info.process.kill()
            info.process.wait(timeout=1)
