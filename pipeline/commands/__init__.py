"""The surface users touch: the CLI (`cli`) and what it prints (the run display, `runs`,
`profile` with its timeline, `trace`, `models`). Nothing here is imported by a stage, so none of
it is part of a stage's code version."""
