"""A stage's code version: the hash of its module and of every package module it imports.

Each module counts as its syntax tree without docstrings: editing a comment or a docstring is not
a cache miss, editing a helper is. Parsing and dumping every package file is a noticeable part of
every run's start, before Ray, even for a run that finds everything cached; so what each file's
text comes to (its syntax digest and the modules it imports) is kept on disk, keyed by a hash of
the text itself, not by modification times, which can repeat within a clock tick. An unreadable or
unwritable cache only makes the next start parse again.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_CACHE_NAME = f"code-digests-py{sys.version_info.major}{sys.version_info.minor}-v1.json"


def cache_file() -> Path:
    """`$XDG_CACHE_HOME/raypipe/...` (`~/.cache` when unset), one file per Python version: the
    syntax tree a text parses to is the interpreter's."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "raypipe" / _CACHE_NAME


@cache
def code_version(module: str, upstream: frozenset[str] = frozenset()) -> str:
    """Hash of `module` and every package module it imports, transitively.

    The walk does not enter `upstream` (the modules of the stages whose outputs this one reads):
    their code shapes this stage only through their outputs, whose fingerprints are in its key.
    """
    digest = hashlib.sha256()
    for name, facts in sorted(_walk(module, upstream).items()):
        digest.update(f"{name}:{facts.digest}\n".encode())
    _DISK.save()
    return digest.hexdigest()[:12]


def user_code_version(where: str) -> str:
    """The code version of a team's feature module (`pipeline.core.user_code.location`), derived
    as the package's is: its syntax tree without docstrings and that of every module of its own
    it imports (for a file, the modules beside it; for a module name, its package's)."""
    if not where.endswith(".py"):
        return code_version(where)
    digest = hashlib.sha256()
    for path, facts in sorted(_file_walk(Path(where)).items()):
        digest.update(f"{path.relative_to(Path(where).parent)}:{facts.digest}\n".encode())
    return digest.hexdigest()[:12]


def _file_walk(first: Path) -> dict[Path, _ModuleFacts]:
    """A module file and the modules beside it that it imports, transitively."""
    folder, found, pending = first.parent, {}, [first]
    while pending:
        path = pending.pop()
        if path in found or not path.is_file():
            continue
        found[path] = _read(path.stem, path.name == "__init__.py", path.read_text())
        for name in found[path].imports:
            parts = name.split(".")
            pending += [folder.joinpath(*parts).with_suffix(".py"),
                        folder.joinpath(*parts, "__init__.py")]
    return found


def package_modules(module: str, upstream: frozenset[str] = frozenset()) -> set[str]:
    """`module` and every module of its top-level package it imports, transitively (function-level
    imports included), with the packages whose `__init__` such an import runs; `upstream` modules
    and what only they import are left out."""
    return set(_walk(module, upstream))


def _walk(module: str, upstream: frozenset[str]) -> dict[str, _ModuleFacts]:
    """`package_modules`, each with its facts (read once per walk)."""
    package = module.split(".")[0]
    found: dict[str, _ModuleFacts] = {}
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found or name in upstream or _origin(name) is None:
            continue
        found[name] = _facts(name)
        parts = name.split(".")
        pending += [".".join(parts[:i]) for i in range(1, len(parts))]
        pending += [m for m in found[name].imports if m.split(".")[0] == package]
    return found


@dataclass(frozen=True)
class _ModuleFacts:
    digest: str
    """Hash of the syntax tree without docstrings."""
    imports: tuple[str, ...]
    """Modules named by the import statements (`from a import b` yields a and a.b)."""


def _facts(module: str) -> _ModuleFacts:
    source = Path(_origin(module))
    text = source.read_bytes()
    is_package = source.name == "__init__.py"
    key = hashlib.sha256(f"{module}:{is_package}:".encode() + text).hexdigest()
    return _DISK.get(key) or _DISK.put(key, _read(module, is_package, text.decode()))


def _read(module: str, is_package: bool, text: str) -> _ModuleFacts:
    tree = ast.parse(text)
    base = module.split(".") if is_package else module.split(".")[:-1]
    imports = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = base[:len(base) - node.level + 1] if node.level else []
            source = ".".join([*parent, *(node.module.split(".") if node.module else [])])
            imports += [source, *(f"{source}.{alias.name}" for alias in node.names)]
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    digest = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
    return _ModuleFacts(digest, tuple(imports))


class _DiskCache:
    """Module facts by text hash: read from `cache_file()` once per process, written back (by
    atomic rename) when this process parsed a text it did not find. What it writes back is the
    facts this process used, so texts that no longer exist drop out instead of piling up."""

    def __init__(self) -> None:
        self._stored: dict[str, _ModuleFacts] | None = None
        self._used: dict[str, _ModuleFacts] = {}
        self._added = False

    def get(self, key: str) -> _ModuleFacts | None:
        if self._stored is None:
            self._stored = self._load()
        facts = self._used.get(key) or self._stored.get(key)
        if facts:
            self._used[key] = facts
        return facts

    def put(self, key: str, facts: _ModuleFacts) -> _ModuleFacts:
        self._used[key] = facts
        self._added = True
        return facts

    def save(self) -> None:
        if not self._added:
            return
        self._added = False
        path = cache_file()
        payload = {key: [f.digest, list(f.imports)] for key, f in self._used.items()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".digests-")
        except OSError:  # a read-only home: the next start parses again
            return
        try:
            with os.fdopen(descriptor, "w") as out:
                json.dump(payload, out)
            os.replace(temporary, path)
        except OSError:  # a full disk: no half-written cache is left behind
            with contextlib.suppress(OSError):
                os.unlink(temporary)

    @staticmethod
    def _load() -> dict[str, _ModuleFacts]:
        try:
            payload = json.loads(cache_file().read_text())
            return {key: _ModuleFacts(digest, tuple(imports))
                    for key, (digest, imports) in payload.items()}
        except (OSError, ValueError, TypeError):
            return {}


_DISK = _DiskCache()


def _search_locations(top: str) -> list[str] | None:
    try:  # a top-level name: finding it imports nothing
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    return spec.submodule_search_locations if spec else None


def _origin(module: str) -> str | None:
    """The source file of a module of an imported package, or None when the name is not a module
    (an imported name). Found on disk, not with `importlib.util.find_spec`, which imports the
    parent module of the name it is given: `pipeline.model.network.TabularNet` would import
    torch, seconds of every run's start."""
    top, *rest = module.split(".")
    package = sys.modules.get(top)
    locations = getattr(package, "__path__", None) if package else _search_locations(top)
    if not locations:
        return None
    base = Path(next(iter(locations)), *rest)
    for candidate in ((base.with_name(base.name + ".py"),) if rest else ()) + (base / "__init__.py",):
        if candidate.is_file():
            return str(candidate)
    return None
