"""Watching what a model meets after training: drift of its inputs and label."""
