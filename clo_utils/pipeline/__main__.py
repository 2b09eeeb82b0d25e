"""`python -m clo_utils.pipeline RECIPE.yaml`: the batch runner's command line (runner.main)."""

import sys

from .runner import main

sys.exit(main())
