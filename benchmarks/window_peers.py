"""The peers of the featurize stage: the same window features with polars and with DuckDB, on
validate's clean rows, with the same [t - W, t) semantics.

- polars: `rolling_<agg>_by(..., closed="left").over(entity)`; label-time features roll over the
          union of source events (at their available-at time) and query events (at t);
- duckdb: window frames `RANGE BETWEEN W PRECEDING AND CURRENT ROW EXCLUDE GROUP`, the same union.

Each reads the clean parquet (hive-partitioned by day) and writes its output as one parquet file,
on this machine's threads (DuckDB told so: its default would be the same), and returns its own
seconds from the first read to the written file (its memory and CPU are measured from outside,
benchmarks/processes.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.core.config import PipelineConfig
from pipeline.features.windows import WindowSpec, window_specs


def run_polars(config: PipelineConfig, data: Path, output: Path) -> dict:
    import polars as pl

    dataset = config.dataset
    started = time.perf_counter()
    clean = pl.scan_parquet(str(data / "clean" / "**" / "*.parquet"), hive_partitioning=True)
    table = clean.select(dataset.row_key, dataset.event_time)
    for (entity, available_at), specs in groups(window_specs(config)).items():
        frame = events(pl, clean, entity, available_at, specs, config)
        table = table.join(frame, on=dataset.row_key, how="left")
    path = output / "polars.parquet"
    output.mkdir(parents=True, exist_ok=True)
    table.collect().write_parquet(path)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": pl.scan_parquet(path).select(pl.len()).collect().item(),
            "output": str(path)}


def events(pl, clean, entity: tuple[str, ...], available_at: str, specs: list[WindowSpec],
           config: PipelineConfig):
    """One (entity, available-at) group's features: rolling windows over source + query events."""
    key, t = config.dataset.row_key, config.dataset.event_time
    values = list(dict.fromkeys(s.column for s in specs if s.column))
    sources = clean.select(*entity, pl.col(available_at).alias("_ts"), *values,
                           pl.lit(None, pl.Int64).alias(key), pl.lit(1).alias("_source"))
    if available_at == t:  # each row is both a source and a query
        events = clean.select(*entity, pl.col(t).alias("_ts"), *values, key,
                              pl.lit(1).alias("_source"))
    else:
        queries = clean.select(*entity, pl.col(t).alias("_ts"),
                               *(pl.lit(None, pl.Float64).alias(v) for v in values), key,
                               pl.lit(0).alias("_source"))
        events = pl.concat([sources, queries])
    events = events.filter(pl.all_horizontal(pl.col(e).is_not_null() for e in entity))
    events = events.sort(*entity, "_ts")
    columns = [_polars_feature(pl, spec, entity).alias(spec.name) for spec in specs]
    return events.with_columns(columns).filter(pl.col(key).is_not_null()).select(
        key, *(spec.name for spec in specs))


def _polars_feature(pl, spec: WindowSpec, entity: tuple[str, ...]):
    def rolling(expr, how: str):
        return getattr(expr, f"rolling_{how}_by")("_ts", window_size=f"{spec.window_us}us",
                                                 closed="left").over(list(entity))

    present = pl.col(spec.column).is_not_null() if spec.column else pl.col("_source") == 1
    count = rolling(present.cast(pl.Int64), "sum")
    if spec.agg == "count":
        return count
    if spec.agg == "sum":  # polars sums an empty window to 0; the contract says null
        return pl.when(count > 0).then(rolling(pl.col(spec.column), "sum"))
    if spec.agg == "time_since_last":
        latest = rolling(pl.when(present).then(pl.col("_ts").dt.epoch("us")), "max")
        return (pl.col("_ts").dt.epoch("us") - latest) / 1e6
    if spec.agg in ("mean", "std", "min", "max"):
        return rolling(pl.col(spec.column), spec.agg)
    raise NotImplementedError(f"no polars peer for {spec.agg}")


def run_duckdb(config: PipelineConfig, data: Path, output: Path) -> dict:
    import duckdb

    dataset = config.dataset
    key, t = dataset.row_key, dataset.event_time
    started = time.perf_counter()
    connection = duckdb.connect()
    connection.execute(f"SET threads = {os.cpu_count()}")
    connection.execute(f"""CREATE VIEW clean AS SELECT * FROM read_parquet(
        '{data / "clean" / "**" / "*.parquet"}', hive_partitioning = true)""")
    by_group = groups(window_specs(config))
    ctes, joins, selected = [], [], []
    for i, ((entity, available_at), specs) in enumerate(by_group.items()):
        ctes.append(f"g{i} AS ({_duckdb_group(entity, available_at, specs, config)})")
        joins.append(f'LEFT JOIN g{i} USING ("{key}")')
        selected += [f'g{i}."{spec.name}"' for spec in specs]
    path = output / "duckdb.parquet"
    output.mkdir(parents=True, exist_ok=True)
    connection.execute(f"""
        COPY (WITH {", ".join(ctes)}
              SELECT clean."{key}", clean."{t}", {", ".join(selected)}
              FROM clean {" ".join(joins)})
        TO '{path}' (FORMAT parquet)""")
    seconds = time.perf_counter() - started
    rows = connection.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0]
    return {"seconds": seconds, "rows": rows, "output": str(path)}


def _duckdb_group(entity: tuple[str, ...], available_at: str, specs: list[WindowSpec],
                  config: PipelineConfig) -> str:
    """SQL for one (entity, available-at) group: window frames over source + query events."""
    key, t = config.dataset.row_key, config.dataset.event_time
    values = list(dict.fromkeys(s.column for s in specs if s.column))
    names = ", ".join(f'"{name}"' for name in entity)
    not_null = " AND ".join(f'"{name}" IS NOT NULL' for name in entity)
    if available_at == t:
        events = (f'SELECT {names}, "{t}" AS _ts, {"".join(f"{v}, " for v in values)}"{key}", '
                  f"1 AS _source FROM clean WHERE {not_null}")
    else:
        events = (f'SELECT {names}, "{available_at}" AS _ts, {"".join(f"{v}, " for v in values)}'
                  f'NULL AS "{key}", 1 AS _source FROM clean WHERE {not_null} UNION ALL '
                  f'SELECT {names}, "{t}" AS _ts, '
                  f'{"".join(f"NULL::DOUBLE AS {v}, " for v in values)}"{key}", 0 AS _source '
                  "FROM clean")
    columns = []
    for spec in specs:
        frame = (f"OVER (PARTITION BY {names} ORDER BY _ts RANGE BETWEEN INTERVAL "
                 f"'{spec.window_us} microseconds' PRECEDING AND CURRENT ROW EXCLUDE GROUP)")
        value = f'"{spec.column}"' if spec.column else "NULLIF(_source, 0)"
        columns.append({
            "count": f"count({value}) {frame}",
            "sum": f"sum({value}) {frame}",
            "mean": f"avg({value}) {frame}",
            "std": f"stddev_samp({value}) {frame}",
            "min": f"min({value}) {frame}",
            "max": f"max({value}) {frame}",
            "time_since_last": f"(epoch_us(_ts) - max(CASE WHEN {value} IS NOT NULL THEN "
                               f"epoch_us(_ts) END) {frame}) / 1e6",
        }[spec.agg] + f' AS "{spec.name}"')
    return (f'SELECT "{key}", {", ".join(columns)} FROM ({events}) '
            f'QUALIFY "{key}" IS NOT NULL')


def groups(specs: list[WindowSpec]) -> dict[tuple[tuple[str, ...], str], list[WindowSpec]]:
    """The window specs by (entity, available-at): each group is one sorted pass."""
    found: dict[tuple[tuple[str, ...], str], list[WindowSpec]] = {}
    for spec in specs:
        found.setdefault((spec.entity, spec.available_at), []).append(spec)
    return found
