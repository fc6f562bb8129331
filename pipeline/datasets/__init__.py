"""Deterministic synthetic event tables, so a fresh checkout can run the whole pipeline offline.

``ensure_dataset`` is what the default config leans on: it writes the table once, and later runs
reuse it. It refuses to reuse a table generated with different parameters, because silently training
on data other than what the config describes is exactly the bug the pipeline exists to stop. It never
writes over a folder it did not create (see ``writer``): a user's real data is never replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.core.timestamps import to_us
from pipeline.datasets.orders import generate_orders
from pipeline.datasets.rideshare import generate_rideshare
from pipeline.datasets.writer import (
    SourceNotEmpty,
    check_target,
    dataset_exists,
    open_dataset,
    read_marker,
    write_partitioned,
)

if TYPE_CHECKING:
    from pipeline.core.config import PipelineConfig

GENERATORS: dict[str, Callable[..., pa.Table]] = {
    "rideshare": generate_rideshare,
    "orders": generate_orders,
}

__all__ = [
    "GENERATORS",
    "SourceNotEmpty",
    "dataset_exists",
    "ensure_dataset",
    "generate_orders",
    "generate_rideshare",
    "open_dataset",
    "prepare_source",
    "read_marker",
    "write_partitioned",
]


def ensure_dataset(
    uri: str,
    kind: str,
    rows: int,
    start: datetime,
    end: datetime,
    seed: int,
    storage_options: dict[str, Any] | None = None,
    cancelled_share: float = 0.0,
) -> bool:
    """Generate and publish the ``kind`` table at ``uri`` unless it is already there; True if it
    generated. Only an absent or empty ``uri``, or an unfinished generation of our own, is written;
    any other folder without the ``_SUCCESS`` marker raises SourceNotEmpty. ``cancelled_share``
    (rideshare) is recorded in the marker only when it is not 0, so a table generated before it
    existed still matches."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown dataset kind {kind!r}; known kinds: {', '.join(GENERATORS)}")
    wanted = {
        "kind": kind,
        "rows": rows,
        "start_us": to_us(start),
        "end_us": to_us(end),
        "seed": seed,
    }
    extras = {"cancelled_share": cancelled_share} if cancelled_share else {}
    wanted.update(extras)
    published = read_marker(uri, storage_options)
    if published is not None:
        generated = published.get("generated")
        if generated is not None and generated != wanted:
            raise ValueError(
                f"{uri} already holds a dataset generated with {generated}, not {wanted}; "
                "point dataset.source at a new location or delete the old one"
            )
        return False
    check_target(uri, storage_options=storage_options)  # before the (slow) generation
    table = GENERATORS[kind](rows, start, end, seed, **extras)
    write_partitioned(table, uri, storage_options=storage_options, metadata={"generated": wanted})
    return True


def prepare_source(config: PipelineConfig, note: Callable[[str], None]) -> None:
    """Generate the configured synthetic table (`dataset.generate`) when its source is missing,
    saying so through `note`."""
    dataset, generate = config.dataset, config.dataset.generate
    if generate and ensure_dataset(dataset.source, generate.kind, generate.rows, dataset.start,
                                   dataset.end, generate.seed, dataset.storage_options,
                                   generate.cancelled_share):
        note(f"generated {generate.rows:,} {generate.kind} rows at {dataset.source}")
