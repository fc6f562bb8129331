"""The evaluation report a person reads: one self-contained HTML file per registry version.

- `content`: what the report says (`ReportContent`), gathered by evaluate; no I/O, no drawing
- `plots`: the PNG figures (matplotlib, Agg), from the content alone
- `page`: the HTML page, every value escaped and every figure a data: URI
"""
