"""Stage 3, evaluation: answers to held-out prompts and what is measured on them.

May import clo_utils.common, the core and clo_utils.translation; never analysis or pipeline.

  generation  answer generation: length-sorted batches, end-of-turn handling, the on-disk generation cache
  decoding    greedy decoding without padding: the entry point, and the shrinking loop for sliding-window models
  continuous  greedy decoding in one batch refilled as answers finish, over a KV cache written in place
  metrics     pure evaluation metrics: fidelity and its shares, chrF++, line pass rate, bootstrap
  evaluate    the evaluation driver: held-out NLL, answers.jsonl and metrics.json
  judge       pairwise LLM-judge win rates
  knowledge   knowledge benchmarks through lm-evaluation-harness (optional)
"""
