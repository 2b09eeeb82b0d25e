"""clo_utils: the reference implementation of Cross-Lingual Optimization (CLO, Lee et al., ACL 2025).

Where to start: `data.build_cross_lingual_pairs` (the paper's preference pairs), then `losses.clo_loss`
(the objective as pure tensor functions), then `train.CLOTrainer` / `train.train_clo` (the loop).

The method, at this level (imports only clo_utils.common):
  data             the paper's data: seed rows, cross-lingual preference pairs, SFT rows
  losses           the CLO objective as pure tensor functions
  train_config     CLOConfig: TrainingArguments plus the objective's knobs, each with its help
  reference        the reference log-probs of the starting model, computed once and cached on disk
  train            CLOTrainer (a transformers.Trainer) and train_clo
  sequences        tokenisation as the trainers see it (every method alike), the seed filter, the collator
  batching         length-grouped batches of seeds (little compute spent on padding)
  train_setup      Trainer arguments per hardware profile, fp32 master weights, dropout off, resume
  precision        the precision per device: bf16 autocast where native, fp16 with loss scaling, fp32
  train_callbacks  callbacks recording wall time, peak memory and the share of trainable weights that moved
  baselines        the TRL baselines: SFT and the DPO stage of SFT+DPO
  models           loading (hub, local, embedded SmolLM2), trainable-parameter selection, run labels

The machinery, one folder per stage of the work; each may import the method, `common` and the
folders before it in this list, never one after it:
  common/          language and method registries, the run-folder contract, caches, text helpers
  translation/     English SFT sources, translators, the quality filter, the seed files (stage 1)
  evaluation/      generation, metrics, the evaluation driver, LLM judge, knowledge benchmarks (stage 3)
  analysis/        tables, intervals, REPORT.md and the figures (stage 4)
  pipeline/        the batch runner over recipes (`python -m clo_utils.pipeline`) and the notebooks' glue
"""

__version__ = "0.1.0"
