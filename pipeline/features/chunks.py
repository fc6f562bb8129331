"""Time chunks with a lookback halo: how featurize streams history through bounded tasks.

A window feature of a row at time t reads source values available in [t - W, t). A value available
at time a belongs to an event at a or, for a label-time value, at no earlier than
a - max_label_delay (validate quarantines later labels). So every source row a chunk [c0, c1) can
need has its event time in [c0 - halo, c1), where halo is the longest window plus, for label-time
features, the label delay.
A task reads just that: its memory depends on the chunk and halo lengths, never on total history,
and no task exchanges rows with another (no shuffle).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipeline.core.timestamps import US_PER_DAY, from_us, to_us
from pipeline.features.windows import WindowSpec


@dataclass(frozen=True)
class Chunk:
    """Rows with event time in [start_us, end_us), from sources in [halo_start_us, end_us)."""

    index: int
    start_us: int
    end_us: int
    halo_start_us: int


def halo_us(specs: Sequence[WindowSpec], label_available_at: str,
            max_label_delay: timedelta) -> int:
    """How far before a chunk its sources' event times can lie."""
    delay = to_us(max_label_delay)
    return max((spec.window_us + (delay if spec.available_at == label_available_at else 0)
                for spec in specs), default=0)


def plan_chunks(days: Sequence[date], chunk_us: int, halo: int) -> list[Chunk]:
    """Chunks aligned to multiples of `chunk_us` since the epoch, covering the given UTC days.

    Alignment to the epoch (not to the data) makes a chunk's boundaries depend on the config
    alone, never on which rows happen to be there.
    """
    starts = set()
    for day in days:
        day_us = to_us(day)
        first = day_us - day_us % chunk_us
        starts.update(range(first, day_us + US_PER_DAY, chunk_us))
    return chunks_from(starts, chunk_us, halo)


def chunk_starts(times_us: np.ndarray, chunk_us: int) -> np.ndarray:
    """The starts of the chunks, aligned as `plan_chunks` aligns them, that hold `times_us`."""
    return np.unique(times_us - times_us % chunk_us)


def chunks_from(starts: Iterable[int], chunk_us: int, halo: int) -> list[Chunk]:
    """The chunks that begin at `starts`, numbered in time order."""
    return [Chunk(index, int(start), int(start) + chunk_us, int(start) - halo)
            for index, start in enumerate(sorted(starts))]


def event_time_filter(event_time: str, partition: str, start_us: int,
                      end_us: int) -> pc.Expression:
    """Rows with event time in [start_us, end_us), pruning the day partitions outside it."""
    first, last = (_day(start_us), _day(end_us - 1))
    stamp = pa.timestamp("us", tz="UTC")
    return ((pads.field(partition) >= first) & (pads.field(partition) <= last)
            & (pads.field(event_time) >= pa.scalar(start_us, stamp))
            & (pads.field(event_time) < pa.scalar(end_us, stamp)))


def _day(micros: int) -> str:
    return from_us(micros).date().isoformat()
