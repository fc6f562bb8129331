"""`pipeline predict`: score an event table with a registered model, with the model's own features.

- `spec`: the model's feature spec and validation rules, read from its lineage (never today's config)
- `rows`: the rows to score and the history their windows read, held to validate's rules
- `reading`: the input's files as blocks of whole row groups, read by Ray tasks
- `output`: predictions and quarantine written atomically, never over a file predict did not write
- `join`: the history rows an input row stands for, found by a hash join of keys over Ray tasks
- `batch`: the checks, the duplicate search and the chunk tasks that tie them together
"""
