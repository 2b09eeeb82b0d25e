"""What every part of the kit uses; imports nothing else of clo_utils.

languages  language registry: one code -> the names of M2M100, NLLB, Apertium and lingua
methods    the table of methods (notebook, fixed parameters, label, colour, family)
runfiles   the run-folder contract: paths, JSON/JSONL reading, atomic writes, per-file helpers
cache      a small persistent SQLite key-value cache (translations, reference log-probs, generations)
text       one word counter, one language-ID helper, one chat-message builder
"""
