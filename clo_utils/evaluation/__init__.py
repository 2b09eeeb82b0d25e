"""Stage 3, evaluation: answers to held-out prompts and what is measured on them.

May import clo_utils.common, the core and clo_utils.translation; never analysis or pipeline.

  generation  answer generation: length-sorted batches, end-of-turn handling, the on-disk generation cache
  decoding    greedy decoding without padding: the entry point, and the shrinking loop for sliding-window models
  continuous  greedy decoding in one batch refilled as answers finish, over a KV cache written in place
  packed_linear  on a CPU, linear layers through oneDNN on weights packed once (decoding and scoring)
  outcomes    one outcome per prompt (target language / other language / no answer), the echoed prefix
  metrics     pure evaluation metrics: outcome shares, echo, repetition, line pass rate, chrF++, bootstrap
  reference_nll  the NLL of held-out reference answers, scored with the prompts' prefill when generating
  evaluate    the evaluation driver: answers.jsonl and metrics.json
  rescore     a run's outcome shares scored again from its saved answers.jsonl
  judge       pairwise LLM-judge win rates
  knowledge   knowledge benchmarks through lm-evaluation-harness (optional)
"""
