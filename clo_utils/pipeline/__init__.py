"""The batch runner and the notebooks' glue: recipes in, stages run through papermill, run folders out.

May import everything else in clo_utils; nothing imports it but the notebooks, tests and benchmarks.
`python -m clo_utils.pipeline RECIPE.yaml` runs a recipe (__main__.py -> runner.main).

  stage_notebooks  the stage notebooks: names, typed `parameters` cells, accepted values
  recipe           recipe YAML loading (line numbers, duplicate keys) and its schema
  preflight        what a recipe needs from the machine: translators, models, the hub, data rows
  gpu_memory       the pre-flight's GPU memory estimate per training process, from a table of model shapes
  stages           a recipe's stages in execution order (data, train, evaluate, analysis)
  code_fingerprint the code a stage runs: its notebook's code cells and the clo_utils files they import
  stage_records    stage fingerprints, completion records, stale outputs, adopted hand-run stages
  runner           the papermill batch runner over recipes
  launch           run a training notebook on every process of `accelerate launch`
  runs             run-folder glue for training notebooks: read a data folder, label and save a run
  notebook_setup   what the notebooks share: Trainer arguments, the loss-curve plot, Apertium on Colab
"""
