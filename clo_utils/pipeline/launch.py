"""Run a training notebook on every process of `accelerate launch` (several GPUs, DeepSpeed, FSDP).

    accelerate launch --config_file params/accelerate/ddp-multigpu.yaml -m clo_utils.pipeline.launch \\
        NOTEBOOK OUTPUT [papermill options, e.g. -p n_seeds 6400]

This is papermill's own command line, with NOTEBOOK and OUTPUT first, except that every process but
the main one writes its executed copy beside OUTPUT as `<stem>.rank<N>.ipynb`: without that the
processes would overwrite one another's notebook. The kernel inherits accelerate's environment
(RANK, WORLD_SIZE, MASTER_ADDR, ...), so the Trainer inside the notebook joins the process group;
weights and train.json are written once, by the main process (clo_utils.pipeline.runs.save_run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def rank_output_path(output: str, rank: int) -> str:
    if rank == 0:
        return output
    path = Path(output)
    return str(path.with_name(f"{path.stem}.rank{rank}{path.suffix}"))


def main(argv: list[str] | None = None) -> int:
    from papermill.cli import papermill

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0].startswith("-") or argv[1].startswith("-"):
        print("usage: python -m clo_utils.pipeline.launch NOTEBOOK OUTPUT [papermill options]", file=sys.stderr)
        return 2
    rank = int(os.environ.get("RANK", "0"))
    argv[1] = rank_output_path(argv[1], rank)
    Path(argv[1]).parent.mkdir(parents=True, exist_ok=True)  # papermill refuses a missing folder
    return papermill.main(args=argv, prog_name="papermill", standalone_mode=False) or 0


if __name__ == "__main__":
    sys.exit(main())
