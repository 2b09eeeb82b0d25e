"""Stage 4, analysis: every run's metrics.json into tables, intervals, REPORT.md and the figures.

May import clo_utils.common, the core, translation and evaluation; never pipeline.

  tables          every run's metrics.json read into the analysis tables (checks runs are comparable)
  rescore         every run under a root whose saved answers were scored by older rules, scored again
  intervals       95% intervals for the report: bootstrap over prompts and across training seeds
  markdown        numbers, cells and tables in Markdown
  report_tables   REPORT.md's number tables: the measured table, run groups against SFT with intervals
  detector_report REPORT.md's detector-accuracy table, on held-out text of known language
  report          REPORT.md: labels, wall time, judge and knowledge tables, example answers, the whole file
  plot_style      the figures' shared look: theme, method colours, axis labels, captions, legends
  plots           the paper's main figures (data efficiency, scores by direction, training curves), all saved
  outcome_plots   the outcome-shares figure (every prompt of every run and direction)
  ablation_plots  the ablation figures: NLL on target or both, trainable modules, SFT's limitation, judge
"""
