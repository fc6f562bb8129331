"""What every layer shares: the config (`config`), durations and times, the packed feature
tensor's layout and the data's roles (`schema`). Imports nothing else of the package."""
