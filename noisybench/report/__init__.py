"""Run records -> summary.csv, paper-style tables (mean ± std (n) over seeds) and figures.

One topic per module, each importing only those below it:

- layout:   which config keys vary, a table's rows, columns and cells, the per-cell tuning choice
- shapes:   the shape a result.json must have to be tabled (a record of another shape is named, not tabled)
- records:  finding run directories and loading their result.json into one row per run
- marks:    the best (bold) and second (underlined) mean of each table column, and the rule
- tables:   the tables, as Markdown and CSV
- latex:    the tables as LaTeX (booktabs, every special character escaped, compact cells)
- runfiles: the other files of a run the figures read (metrics.csv, noise.json), checked as untrusted
- draw:     the figures' style (print sizes, colour-blind-safe palette) and matplotlib helpers
- groups:   what a figure draws: a table set's runs with the report's labels (tuned per cell with
            --tune), the n behind a band, per-epoch bands
- noise_figures, epoch_figures, weight_figures: the figure families (over noise, over epochs, weights)
- figures:  every figure (`noisybench plot`), saving, and the caption file figures.md
- html:     the one-file HTML report (tables and figures)
- writers:  every output format by name, and `write_report` (summary.csv plus the tables)
- callback: the Hydra callback that rewrites a sweep's tables, and the sweep's progress line
"""
