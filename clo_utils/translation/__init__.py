"""Stage 1, the data: English SFT sources, translation into the target language, the seed files.

May import clo_utils.common and the core (clo_utils.data, clo_utils.models); nothing later.

  sources             English SFT sources: loading, deduplication, nested sampling, held-out split
  segments            segmentation for translation: Markdown structure, code and URLs kept
  translators         the Translator interface and Apertium (offline, rule-based)
  neural_translators  M2M100, NLLB, Marian (seq2seq) and a chat-LLM translator
  translate           translators behind one function, with a persistent cache
  quality             quality filter for translated seeds
  seeds               translate-and-filter in rounds, and the data folder with its manifest
"""
