"""A team's own feature code, under the pipeline's time contract.

A config names one Python module (`features.module`: a file path, relative to the config, or an
importable module name). In it, two kinds of functions, each vectorised over many rows:

- a *row feature* (`@row_feature(inputs=[...])`): a function of the row's own columns, known at
  its event time, e.g. a ratio or a calendar feature. It gets a `Rows` mapping that holds only
  the columns it declared, and returns one value per row;
- a *window aggregation* (`@window_aggregation`): usable as `agg: <module>:<function>` in any
  `features.windows` entry. It gets a `Window` (every row's window over its entity's earlier
  values, as slices of one flat array) and returns one value per row.

The declared inputs are checked when the config loads (a label-time column is refused, naming
the key), and the time-travel audit recomputes user features like built-in ones: a row feature
from the row alone, an aggregation from exactly the values its window held.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa

_DECLARED = "__raypipe_feature__"


class UserCodeError(ValueError):
    """User feature code that cannot be loaded or that broke its contract: one line, named."""


@dataclass(frozen=True)
class RowFeatureDeclaration:
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class AggregationDeclaration:
    pass


@dataclass(frozen=True)
class ModelDeclaration:
    pass


@dataclass(frozen=True)
class ModelInputs:
    """What a model factory builds for: the rows' inputs as the pipeline's loop hands them to
    the module's `forward(features, categorical)`, and the task.

    `features` is (rows, num_features) float32, standardised on the training split (NaN → 0);
    `categorical` is (rows, len(cardinalities)) int64 codes, 0 for a value unseen in training.
    `forward` returns (rows,) float outputs: the standardised label for regression, a logit for
    binary (the loss is MSE or BCE-with-logits)."""

    num_features: int
    cardinalities: tuple[int, ...]
    """Per categorical column: its vocabulary size + 1 (code 0 = unknown)."""
    embedding_dim: int
    """`train.embedding_dim`: the embedding width the config asks for."""
    task: str


def row_feature(inputs: Sequence[str]) -> Callable[[Callable], Callable]:
    """Declare a row feature and the columns it reads: `fn(rows: Rows) -> array of len(rows)`."""
    if isinstance(inputs, str):
        inputs = [inputs]

    def declare(function: Callable) -> Callable:
        setattr(function, _DECLARED, RowFeatureDeclaration(tuple(inputs)))
        return function

    return declare


def window_aggregation(function: Callable) -> Callable:
    """Declare a window aggregation: `fn(window: Window) -> array of one value per row`."""
    setattr(function, _DECLARED, AggregationDeclaration())
    return function


def model_factory(function: Callable) -> Callable:
    """Declare a model factory: `fn(inputs: ModelInputs) -> torch.nn.Module`. The module it is in
    is stored with every model it builds, so a registered model is rebuilt by its own code."""
    setattr(function, _DECLARED, ModelDeclaration())
    return function


class Rows(Mapping[str, np.ndarray]):
    """The declared columns of a batch of rows as numpy arrays: numbers as float64 (NaN: null),
    timestamps as datetime64[us] (NaT: null), anything else as objects (None: null). Reading a
    column that was not declared raises."""

    def __init__(self, feature: str, columns: dict[str, np.ndarray]) -> None:
        self._feature, self._columns = feature, columns

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._columns:
            raise UserCodeError(f"row feature {self._feature} read column {name!r}, which it "
                                f"did not declare (inputs: {', '.join(self._columns)})")
        return self._columns[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


@dataclass(frozen=True)
class Window:
    """Every row's window, as slices of one flat array.

    `values` holds the source column's values (float64, NaN where missing) of the rows'
    entities, each entity's values in available-at order (ties by row key), and `available_at`
    their times (int64 microseconds since the epoch). Row i's window is
    `values[start[i]:end[i]]`: exactly the values available in [t - W, t) for its event time t
    (`event_time[i]`). The arrays hold more than the windows (other rows' windows, later values
    of the same entity): a function must read only its slices, which the audit checks.
    """

    values: np.ndarray
    available_at: np.ndarray
    start: np.ndarray
    end: np.ndarray
    event_time: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    def sum(self, x: np.ndarray) -> np.ndarray:
        """Per row, the sum of `x` (aligned with `values`; NaN counts as 0) over its window.
        Sums of values centred on their mean: no precision lost to what came before."""
        x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
        centre = float(x.mean()) if len(x) else 0.0
        prefix = np.concatenate([[0.0], np.cumsum(x - centre)])
        return prefix[self.end] - prefix[self.start] + (self.end - self.start) * centre

    def count(self) -> np.ndarray:
        """Per row, how many values in its window are not missing."""
        return self.sum(~np.isnan(self.values)).round().astype(np.int64)


@dataclass(frozen=True)
class UserCode:
    """A loaded feature module: its name (as `agg: <name>:<function>` spells it) and module."""

    name: str
    module: ModuleType
    location: str

    def row_feature(self, name: str) -> tuple[Callable, RowFeatureDeclaration]:
        return self._declared(name, RowFeatureDeclaration, "a @row_feature")

    def aggregation(self, name: str) -> Callable:
        return self._declared(name, AggregationDeclaration, "a @window_aggregation")[0]

    def model_factory(self, name: str) -> Callable:
        return self._declared(name, ModelDeclaration, "a @model_factory")[0]

    def source(self) -> str:
        """The module's text, stored with a model it builds."""
        return Path(self.module.__file__).read_text()

    def _declared(self, name: str, kind: type, what: str) -> tuple[Callable, object]:
        function = getattr(self.module, name, None)
        if function is None:
            raise UserCodeError(f"{self.location} has no function {name!r}")
        declaration = getattr(function, _DECLARED, None)
        if not isinstance(declaration, kind):
            raise UserCodeError(f"{self.location}: {name} is not declared as {what}")
        return function, declaration


def call(what: str, function: Callable, argument: Rows | Window, rows: int) -> pa.Array:
    """A user function's result for `rows` rows, checked (`checked`); whatever it raises, one
    line that names it (`what`: "row feature log_distance")."""
    try:
        result = function(argument)
    except UserCodeError:
        raise
    except Exception as exc:  # the user's function may raise anything
        raise UserCodeError(f"{what} raised {type(exc).__name__}: {exc} (on {rows:,} rows)") \
            from exc
    return checked(what, result, rows)


def checked(what: str, result: object, rows: int) -> pa.Array:
    """A user function's result as float64 (NaN → null), or the one line that says what is wrong
    with it."""
    try:
        values = np.asarray(result, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserCodeError(f"{what} returned {type(result).__name__} values that are not "
                            "numbers") from None
    if values.shape != (rows,):
        raise UserCodeError(f"{what} returned shape {values.shape} for {rows:,} rows: "
                            "expected one value per row")
    if np.isinf(values).any():
        at = int(np.flatnonzero(np.isinf(values))[0])
        raise UserCodeError(f"{what} returned an infinite value (row {at} of {rows:,}): "
                            "return NaN for no value")
    return pa.array(values, pa.float64(), from_pandas=True)


def shipped_folders(module: str | None) -> list[str]:
    """The folder of a file module, for a job's runtime_env `py_modules`: Ray ships it to every
    node, where `load` imports the module from it when the file's own path is not there."""
    return [str(Path(module).parent)] if module and module.endswith(".py") else []


def _shipped(where: str) -> str | None:
    """The name a shipped file module imports as on a node without its path (`folder.stem`),
    or None when no such package is on the path."""
    path = Path(where)
    name = f"{path.parent.name}.{path.stem}"
    try:
        return name if importlib.util.find_spec(path.parent.name) else None
    except (ImportError, ValueError):
        return None


def module_from_source(name: str, source: str) -> ModuleType:
    """A module rebuilt from the text stored with a model: the model's own code, whatever the
    team's module says today."""
    module = ModuleType(f"raypipe_model_{name}")
    try:
        exec(compile(source, f"<{name}, stored with the model>", "exec"), module.__dict__)
    except Exception as exc:  # the stored code may need a package this machine lacks
        raise UserCodeError(f"the model code stored with the model ({name}) does not run: "
                            f"{type(exc).__name__}: {exc}") from exc
    return module


def is_user_aggregation(agg: str) -> bool:
    return ":" in agg


def location(reference: str, config_dir: Path) -> str:
    """Where a `features.module` reference points: an absolute file path for a path (relative to
    the config's folder), else the module name as given."""
    if reference.endswith(".py") or "/" in reference:
        return str((config_dir / reference).resolve())
    return reference


def load(where: str) -> UserCode:
    """The module at `where` (`location`), imported once per process and text of its file: a
    long-lived Ray worker never runs a file's older text."""
    path = Path(where)
    text = path.read_bytes() if where.endswith(".py") and path.is_file() else b""
    return _load(where, hashlib.sha256(text).hexdigest())


@cache
def _load(where: str, text_digest: str) -> UserCode:
    path = Path(where)
    shipped = _shipped(where) if where.endswith(".py") and not path.is_file() else None
    try:
        if shipped:
            return UserCode(path.stem, importlib.import_module(shipped), where)
        if where.endswith(".py"):
            if not path.is_file():
                raise UserCodeError(f"feature module {where} does not exist")
            name = path.stem
            spec = importlib.util.spec_from_file_location(f"raypipe_user_{name}", path)
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(path.parent))  # its own sibling modules import as usual
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            name = where.rsplit(".", 1)[-1]
            module = importlib.import_module(where)
    except UserCodeError:
        raise
    except Exception as exc:  # the user's module may raise anything while it imports
        raise UserCodeError(f"feature module {where} does not import: "
                            f"{type(exc).__name__}: {exc}") from exc
    return UserCode(name, module, where)
