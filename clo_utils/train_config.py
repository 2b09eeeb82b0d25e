"""CLOConfig: the Hugging Face TrainingArguments plus the CLO objective's knobs, each with its help."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .losses import NLL_ON


@dataclass
class CLOConfig(TrainingArguments):
    """TrainingArguments plus the CLO objective's knobs (docs/method.md §2)."""

    beta: float = field(
        default=0.1,
        metadata={
            "help": "DPO temperature of the cross-lingual preference term. "
            "Not recovered from the paper; CRPO's re-run used 0.1."
        },
    )
    lam: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the target NLL: loss = lam*NLL + (1-lam)*L_CL "
            "(0.5, 'recommended in the original paper' per CRPO)."
        },
    )
    nll_on: str = field(
        default="target",
        metadata={
            "help": "'target': NLL on target-language chosen responses "
            "only (paper); 'both': also English (the ablation)."
        },
    )
    max_length: int = field(
        default=1024,
        metadata={
            "help": "Max tokens of one prompt+response sequence; a seed with a longer sequence is dropped and counted."
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Every dropout probability to 0, as in TRL's "
            "DPO: the policy at step 0 equals the reference, "
            "and the reward margins are not noise."
        },
    )
    ref_cache_dir: str | None = field(
        default=None, metadata={"help": "Where reference log-probs are cached (default: the kit's cache dir)."}
    )
    precompute_ref_batch_size: int = field(default=8, metadata={"help": "Seeds per batch in the reference pass."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs every column."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "'group_by_length' (default): batches of seeds of similar length (clo_utils.batching), little "
            "compute on padding; 'random', 'sequential': the Trainer's samplers."
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack a batch's sequences into one row (position_ids restart at 0 per sequence, no attention "
            "mask): no compute on padding, but eager and sdpa attention then score the whole packed row, which "
            "costs more than the padding saves (benchmarks/mfu.py), hence off by default. Used only where it "
            "is proven equal to padded batches (PADDING_FREE_MODEL_TYPES with eager or sdpa attention)."
        },
    )
    forward_chunk_padding: float | None = field(
        default=None,
        metadata={
            "help": "Forward a padded batch as chunks of rows of similar length, each cut to its own width, with at "
            "most this share of padding per chunk (clo_utils.batching.length_chunks), all before one backward: "
            "the same loss and gradients, less compute on padding (a seed's four sequences differ in length). "
            "None: one forward per batch. training_profile sets it on CPU; one forward on GPU, where one large "
            "batch runs better, and under distributed training (see CLOTrainer._chunk_padding)."
        },
    )
    report_to: str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"CLOConfig.beta must be > 0, got {self.beta}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"CLOConfig.lam must be in [0, 1], got {self.lam}")
        if self.nll_on not in NLL_ON:
            raise ValueError(f"CLOConfig.nll_on must be one of {NLL_ON}, got {self.nll_on!r}")
        if self.forward_chunk_padding is not None and not 0.0 <= self.forward_chunk_padding <= 1.0:
            raise ValueError(
                f"CLOConfig.forward_chunk_padding must be None or in [0, 1], got {self.forward_chunk_padding}"
            )
