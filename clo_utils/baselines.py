"""The TRL baselines: SFT (SFTTrainer) and the DPO stage of SFT+DPO (DPOTrainer), on rows tokenised
exactly as CLO's sequences (clo_utils.sequences), so every method learns the same response endings."""

from __future__ import annotations

import copy
import os

from .precision import precision_record
from .sequences import tokenize_dpo_pairs, tokenize_sft_rows
from .train_callbacks import summary_callbacks
from .train_setup import prepare_mixed_precision, resume_checkpoint, training_profile


def sft_config(output_dir: str, max_length: int = 1024, device: str = "auto", model=None, **overrides):
    """TRL SFTConfig for the baseline: completion-only loss on conversational prompt-completion rows, in
    batches of rows of similar length (transformers' LengthGroupedSampler), as CLO's batches are.
    `device` and `model` pick the precision (train_setup.training_profile)."""
    from trl import SFTConfig

    kwargs = {
        "output_dir": output_dir,
        "max_length": max_length,
        "completion_only_loss": True,
        "report_to": "none",
        "packing": False,
        "train_sampling_strategy": "group_by_length",
        **training_profile(device, clo=False, model=model),
    }
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def train_sft(model, tokenizer, sft_rows: list[dict], config, callbacks: list | None = None):
    """The SFT baseline with TRL's SFTTrainer on rows from `build_sft_rows` (both / en / tgt).

    TRL gets the rows pre-tokenised by `tokenize_sft_rows`, so its labels are CLO's: the same
    response ending, the loss on the response only. The model arrives with its trainable subset
    already chosen (`select_trainable`), so SFT and CLO update the same parameters.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    dataset = Dataset.from_list(tokenize_sft_rows(list(sft_rows), tokenizer, getattr(config, "max_length", None)))
    prepare_mixed_precision(model, config)
    memory, change = summary_callbacks()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[memory, change, *(callbacks or [])],
    )
    precision = precision_record(model, config)
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    return trainer, {"rows": len(dataset), **memory.summary, **change.summary, "precision": precision}


def dpo_config(
    output_dir: str, beta: float = 0.1, max_length: int = 1024, device: str = "auto", model=None, **overrides
):
    """TRL DPOConfig for the SFT+DPO baseline: sigmoid loss, reference log-probs precomputed, batches of
    pairs of similar length (the rows' `length` column, see `tokenize_dpo_pairs`). `device` and `model`
    pick the precision (train_setup.training_profile)."""
    from trl import DPOConfig

    kwargs = {
        "output_dir": output_dir,
        "beta": beta,
        "max_length": max_length,
        "loss_type": ["sigmoid"],
        "precompute_ref_log_probs": True,
        "report_to": "none",
        "train_sampling_strategy": "group_by_length",
        **training_profile(device, clo=False, model=model),
    }
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def _pretokenized_dpo_trainer():
    """TRL's DPOTrainer on rows from `tokenize_dpo_pairs`: its own tokenisation is skipped, and the
    rows' `length` column survives the removal of unused columns (group_by_length sampling reads it;
    TRL's collator ignores it)."""
    from trl import DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            if "length" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "length"]

    return PreTokenizedDPOTrainer


def _fsdp_enabled(config) -> bool:
    """FSDP requested by the training arguments or by `accelerate launch` (its environment)."""
    return bool(getattr(config, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def train_dpo(model, tokenizer, pairs: list[dict], config, callbacks: list | None = None):
    """DPO with TRL's DPOTrainer on the same cross-lingual pairs (the second stage of SFT+DPO).

    The reference is the model as it arrives (the SFT model). Without FSDP, TRL takes it from the
    policy itself; under FSDP, TRL would reload the config's `_name_or_path` (the untouched base),
    so a frozen copy is passed as `ref_model`, used for the precomputed log-probs, then released.
    """
    from datasets import Dataset

    dataset = Dataset.from_list(tokenize_dpo_pairs(list(pairs), tokenizer, getattr(config, "max_length", None)))
    prepare_mixed_precision(model, config)
    ref_model = None
    if _fsdp_enabled(config):
        if not getattr(config, "precompute_ref_log_probs", False):
            raise ValueError(
                "SFT+DPO under FSDP needs precompute_ref_log_probs=True (dpo_config's default): the "
                "reference is the SFT model, passed once for the precomputed log-probs"
            )
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    memory, change = summary_callbacks()
    trainer = _pretokenized_dpo_trainer()(
        model=model,
        ref_model=ref_model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[memory, change, *(callbacks or [])],
    )
    if ref_model is not None:  # the log-probs are precomputed: the copy is no longer needed
        trainer.ref_model = None
    precision = precision_record(model, config)
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    return trainer, {"pairs": len(dataset), **memory.summary, **change.summary, "precision": precision}
