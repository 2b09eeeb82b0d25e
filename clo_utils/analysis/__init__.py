"""Stage 4, analysis: every run's metrics.json into tables, intervals, REPORT.md and the figures.

May import clo_utils.common, the core, translation and evaluation; never pipeline.

  tables      every run's metrics.json read into the analysis tables (checks runs are comparable)
  intervals   95% intervals for the report: bootstrap over prompts and across training seeds
  report      REPORT.md: measured table, labels, wall time, example answers
  plot_style  the figures' shared look: theme, method colours, axis labels, captions, legends
  plots       the paper's figure set from the analysis tables
"""
