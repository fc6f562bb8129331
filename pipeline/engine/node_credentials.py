"""A failure in a Ray worker, named with its node; first of all a worker that finds no
object-storage credentials, in one sentence.

Credentials that only the driver's environment holds do not travel with the work: s3fs in a
worker looks for its own (its node's environment, an instance role). Without them, botocore's
`NoCredentialsError` surfaces as a remote traceback a hundred lines long. Work wrapped by
`naming_node` turns it into `NodeLacksCredentials`, whose message names the Ray node and says how
to give every node credentials; `find_missing_credentials` finds either in a failure's chain.
`remote_failure` finds any other worker's exception and where it ran.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

HOW = ("give every node credentials: the nodes' own environment or instance role (IRSA on "
       "Kubernetes), the job's runtime_env env_vars (`ray job submit --runtime-env-json`), or "
       "storage_options")


_WORKER = re.compile(r"\(pid=(?P<pid>\d+), ip=(?P<ip>[^)]+)\)")  # Ray's first line of a task error


class NodeLacksCredentials(RuntimeError):
    """Object storage refused a Ray worker for want of credentials; the message names its node."""

    @classmethod
    def here(cls) -> NodeLacksCredentials:
        import ray

        context = ray.get_runtime_context()
        node = context.get_node_id()
        ip = next((n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node), "?")
        return cls(f"Ray node {node} ({ip}) found no credentials for object storage; {HOW}")


def naming_node(work: Callable) -> Callable:
    """`work` (a function, or a class for Ray Data's actor pool) with a missing-credentials
    failure raised as NodeLacksCredentials; picklable like `work`."""
    if isinstance(work, type):
        class Named(work):
            def __call__(self, *args, **kwargs):
                return _named(super().__call__, *args, **kwargs)

        Named.__name__ = Named.__qualname__ = work.__name__
        return Named

    @functools.wraps(work)
    def run(*args, **kwargs):
        return _named(work, *args, **kwargs)

    return run


def _named(call: Callable, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except Exception as exc:
        if _is_missing_credentials(exc):
            raise NodeLacksCredentials.here() from None
        raise


def find_missing_credentials(exc: BaseException) -> str | None:
    """The sentence for a failure caused by missing credentials (in a worker or the driver), or
    None. Ray wraps a worker's exception as the `cause` of a RayTaskError."""
    remote = remote_failure(exc)
    where = remote[1] if remote else "the driver"
    for link in exception_chain(exc):
        if type(link) is NodeLacksCredentials:  # not Ray's RayTaskError subclass of it
            return str(link)
        if type(link).__name__ == "NoCredentialsError":
            return f"{where} found no credentials for object storage; {HOW}"
    return None


def remote_failure(exc: BaseException) -> tuple[BaseException, str] | None:
    """(the exception a Ray worker raised, "a Ray worker on IP, pid N") when `exc` came from
    one, else None. Ray's RayTaskError holds the worker's exception as its `cause` and names the
    worker only in its text."""
    for link in exception_chain(exc):
        cause = getattr(link, "cause", None)
        if type(link).__name__.startswith("RayTaskError") and cause is not None:
            found = _WORKER.search(str(link))
            return cause, (f"a Ray worker on {found['ip']}, pid {found['pid']}" if found
                           else "a Ray worker")
    return None


def _is_missing_credentials(exc: BaseException) -> bool:
    return any(type(link).__name__ == "NoCredentialsError" for link in exception_chain(exc))


def exception_chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
