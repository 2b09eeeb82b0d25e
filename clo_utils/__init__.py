"""clo_utils: the reference implementation of Cross-Lingual Optimization (CLO, Lee et al., ACL 2025).

Modules stay small and single-purpose. From the paper's method to the run driver:
  languages       language registry: one code -> the names of M2M100, NLLB, Apertium and lingua
  text            one word counter, one language-ID helper, one chat-message builder
  methods         the table of methods (notebook, fixed parameters, label, colour, family)
  runfiles        the run-folder contract: paths, JSON/JSONL reading, atomic writes, per-file helpers
  cache           a small persistent SQLite key-value cache (translation, judging)
  data            the paper's data: seed rows, cross-lingual preference pairs, SFT rows
  sources         English SFT sources: loading, deduplication, nested sampling, held-out split
  segments        segmentation for translation: Markdown structure, code and URLs kept
  translators     the Translator interface and Apertium (offline, rule-based)
  neural_translators  M2M100, NLLB, Marian (seq2seq) and a chat-LLM translator
  translate       translators behind one function, with a persistent cache
  quality         quality filter for translated seeds
  seeds           translate-and-filter in rounds, and the data folder with its manifest
  losses          the CLO objective as pure tensor functions
  models          loading (hub, local, embedded SmolLM2) and trainable-parameter selection
  batching        length-grouped batches of seeds (little compute spent on padding)
  sequences       tokenisation as the trainers see it (every method alike), the seed filter, the CLO collator
  train_setup     Trainer arguments per hardware profile, fp32 master weights, dropout off, resume
  train_callbacks callbacks recording wall time, peak memory and the share of trainable weights that moved
  train           CLOConfig, CLOTrainer (a transformers.Trainer), train_clo; tokenisers and baselines importable too
  baselines       the TRL baselines: SFT and the DPO stage of SFT+DPO
  notebook_setup  what training notebooks 02 and 03 share: Trainer arguments, the loss-curve plot
  runs            run-folder glue for training: read a data folder, label and save a run
  metrics         pure evaluation metrics: fidelity and its shares, chrF++, line pass rate, bootstrap
  intervals       95% intervals for the report: bootstrap over prompts and across training seeds
  generation      answer generation: length-sorted batches, end-of-turn handling, the on-disk generation cache
  evaluate        the evaluation driver: held-out NLL, answers.jsonl and metrics.json
  judge           pairwise LLM-judge win rates
  knowledge       knowledge benchmarks through lm-evaluation-harness (optional)
  tables          every run's metrics.json read into the analysis tables (checks runs are comparable)
  plot_style      the figures' shared look: theme, method colours, axis labels, captions, legends
  plots           the paper's figure set from the analysis tables
  report          REPORT.md: measured table, labels, wall time, example answers
  stage_notebooks  the stage notebooks: names, typed `parameters` cells, accepted values
  recipe          recipe YAML loading (line numbers, duplicate keys) and its schema
  preflight       what a recipe needs from the machine: translators, models, the hub, data rows
  stages          a recipe's stages in execution order (data, train, evaluate, analysis)
  stage_records   stage fingerprints, completion records, stale outputs, adopted hand-run stages
  pipeline        papermill batch runner over recipes
  launch          run a training notebook on every process of `accelerate launch`
"""

__version__ = "0.1.0"
