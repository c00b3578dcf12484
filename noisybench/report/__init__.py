"""Run records -> summary.csv, paper-style tables (mean ± std (n) over seeds) and figures.

One topic per module, each importing only those below it:

- layout:   which config keys vary, a table's rows, columns and cells, the per-cell tuning choice
- records:  finding run directories and loading their result.json into one row per run
- tables:   the tables, as Markdown, CSV and LaTeX
- draw:     the figures' style (print sizes, colour-blind-safe palette) and matplotlib helpers
- figures:  the figures (`noisybench plot`), grouped as the tables are
- html:     the one-file HTML report (tables and figures)
- writers:  every output format by name, and `write_report` (summary.csv plus the tables)
- callback: the Hydra callback that rewrites a sweep's tables, and the sweep's progress line
"""
