"""Point-in-time window features: the kernel, its brute-force reference, chunking and the audit.

`pipeline.stages.featurize` wires these into Ray; everything here is plain pyarrow + numpy.
"""

from pipeline.features.windows import WindowResult, WindowSpec, compute_windows, window_specs

__all__ = ["WindowResult", "WindowSpec", "compute_windows", "window_specs"]
