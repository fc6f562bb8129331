"""raypipe: a point-in-time-correct training pipeline on Ray."""
