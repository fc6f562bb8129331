"""Where a run's code came from: package versions and the git commit, for every manifest."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path

_PACKAGES = ("raypipe", "ray", "pyarrow", "torch", "numpy", "fsspec", "opentelemetry-sdk")

@cache
def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def git_commit() -> str | None:
    """The commit of the code that ran, with "+dirty" when the tree had uncommitted changes.

    Images have no .git: cluster/Dockerfile bakes the commit into RAYPIPE_GIT_COMMIT instead.
    """
    if os.environ.get("RAYPIPE_GIT_COMMIT"):
        return os.environ["RAYPIPE_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")
