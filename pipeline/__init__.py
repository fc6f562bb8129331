"""raypipe: a point-in-time-correct training pipeline on Ray.

The public API for a team's own code (see docs/user-code.md): `row_feature`,
`window_aggregation` and `model_factory`, and the `Rows`, `Window` and `ModelInputs` they are
handed. Imported on first use, so
that `import pipeline` stays light for the command line.
"""

_PUBLIC = {"row_feature", "window_aggregation", "model_factory", "Rows", "Window", "ModelInputs"}


def __getattr__(name: str):
    if name in _PUBLIC:
        from pipeline.core import user_code

        return getattr(user_code, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
