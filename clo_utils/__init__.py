"""clo_utils: the reference implementation of Cross-Lingual Optimization (CLO, Lee et al., ACL 2025).

Modules stay small and single-purpose:
  languages  language registry (codes for M2M100, NLLB, Apertium, lingua)
  data       English SFT data, nested sampling, cross-lingual pairs and SFT rows
  translate  translators behind one function, with a persistent cache
  losses     the CLO objective as pure tensor functions
  models     loading (hub, local, embedded SmolLM2) and trainable-parameter selection
  train      CLOTrainer (a transformers.Trainer) and the TRL baselines
  evaluate   generation, language fidelity, chrF++, held-out NLL
  judge      pairwise LLM-judge win rates
  plots      the paper's figure set from metrics.json files
  pipeline   papermill batch runner over recipes
"""

__version__ = "0.1.0"
