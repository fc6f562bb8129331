"""The terminal during a run: Ray's own output to a log file, the pipeline's lines and live progress.

`ray_output.RayOutputToFile` takes Ray's output off the terminal; `display` draws the stages
(live at a terminal, plain lines otherwise); `progress` brings the workers' progress to it.
Nothing here is imported by a stage, so none of it is part of a stage's code version.
"""
