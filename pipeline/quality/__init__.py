"""Row-level data quality rules: pure functions on Arrow tables, no I/O, no Ray."""
