"""CLO training on the Hugging Face Trainer stack: CLOTrainer and train_clo.

Why a `transformers.Trainer` subclass rather than a TRL `DPOTrainer` subclass: CLO's unit is the
*seed* (two triples, four sequences, one batch), its loss adds a target-only NLL term that TRL
removed (`rpo_alpha` is gone since TRL 0.29), and its reference log-probs are cached on disk
across runs. DPOTrainer's tokenisation, collator and loss dispatch would all need overriding.
The Trainer base still gives accelerate/DeepSpeed/FSDP, checkpoints, resume, `report_to` and
logging. The sequence convention is TRL's (prompt via the chat template with the generation
prompt, completion = the rest of the rendered conversation), so CLO with lam = 0 equals
DPOTrainer's sigmoid loss on the same data (tests/test_train.py checks it).

The configuration is clo_utils.train_config (CLOConfig), the reference pass clo_utils.reference, the
tokenisers and the collator clo_utils.sequences, the TRL baselines (SFT, SFT+DPO) clo_utils.baselines;
their names are importable from here too.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import torch
from transformers import Trainer

from .baselines import _pretokenized_dpo_trainer as _pretokenized_dpo_trainer
from .baselines import dpo_config, sft_config, train_dpo, train_sft
from .losses import clo_loss, packed_sequence_logps, response_nll, response_positions, sequence_logps
from .precision import precision_record
from .reference import REFERENCE_CACHE_VERSION, ReferencePassMixin, model_fingerprint
from .sequences import (
    PADDING_FREE_ATTENTION,
    PADDING_FREE_MODEL_TYPES,
    SEQUENCE_ORDER,
    CLOCollator,
    pack_sequences,
    pad_sequences,
    padding_free_support,
    seeds_within_max_length,
    tokenize_clo_pairs,
    tokenize_dpo_pairs,
    tokenize_prompt_response,
    tokenize_sft_rows,
)
from .train_callbacks import PeakMemoryCallback, TrainableChangeCallback, peak_memory_mb, summary_callbacks
from .train_config import CLOConfig
from .train_setup import disable_dropout, prepare_mixed_precision, resume_checkpoint, training_profile

__all__ = [
    "PADDING_FREE_ATTENTION",
    "PADDING_FREE_MODEL_TYPES",
    "REFERENCE_CACHE_VERSION",
    "SEQUENCE_ORDER",
    "CLOCollator",
    "CLOConfig",
    "CLOTrainer",
    "PeakMemoryCallback",
    "TrainableChangeCallback",
    "disable_dropout",
    "dpo_config",
    "model_fingerprint",
    "pack_sequences",
    "pad_sequences",
    "padding_free_support",
    "peak_memory_mb",
    "prepare_mixed_precision",
    "seeds_within_max_length",
    "sft_config",
    "tokenize_clo_pairs",
    "tokenize_dpo_pairs",
    "tokenize_prompt_response",
    "tokenize_sft_rows",
    "train_clo",
    "train_dpo",
    "train_sft",
    "training_profile",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- trainer


class CLOTrainer(ReferencePassMixin, Trainer):
    """Trainer for the CLO objective. `train_dataset` is the output of `tokenize_clo_pairs`.

    Reference log-probs are computed once, before training, by the same model in eval mode
    (adapters disabled for LoRA), and cached on disk keyed by model and data fingerprints.
    """

    # The Trainer divides compute_loss's value by the number of micro-batches in the accumulation
    # window: the preference term is a mean over triples per micro-batch, and the NLL term is scaled
    # in compute_loss so that this division leaves the token mean over the window. (Left at None,
    # transformers would infer from model.accepts_loss_kwargs that the loss is already scaled.)
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: CLOConfig, train_dataset: list[dict], processing_class=None, **kwargs):
        from datasets import Dataset

        if not isinstance(args, CLOConfig):
            raise TypeError("CLOTrainer needs a CLOConfig")
        tokenizer = processing_class
        pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
        self.pad_token_id = pad_id
        self.padding_free = args.padding_free
        if args.padding_free and (why_not := padding_free_support(model)) is not None:
            log.info("padded training batches: padding-free packing is not proven here (%s)", why_not)
            self.padding_free = False
        kwargs.setdefault("data_collator", CLOCollator(pad_id, padding_free=self.padding_free))
        examples = list(train_dataset)
        prepare_mixed_precision(model, args)
        if args.disable_dropout:
            disable_dropout(model)
        super().__init__(model=model, args=args, train_dataset=None, processing_class=processing_class, **kwargs)
        self._logits_to_keep_works = True  # set False once a model rejects or ignores the mask
        self.reference_forward_batches = 0  # counted so tests and logs can see a cache hit
        self.reference_seeds_computed = 0
        self.reference_cache_path: Path | None = None
        self._nll_window_tokens: torch.Tensor | None = None  # target tokens of this accumulation window, all processes
        self.forward_chunk_padding = self._chunk_padding()
        if "ref_logps" not in examples[0]:
            ref = self.compute_reference_logps(examples)
            examples = [{**ex, "ref_logps": ref[ex["index"]].tolist()} for ex in examples]
        self.train_dataset = Dataset.from_list(examples)
        self._stored_metrics: dict[str, list[float]] = defaultdict(list)

    def _chunk_padding(self) -> float | None:
        """args.forward_chunk_padding, or None (one forward per batch) under a distributed wrapper.

        Chunks mean several forwards before one backward. DDP pairs each forward with a backward: every
        forward prepares its gradient reducer again (Reducer.prepare_for_forward; with find_unused_parameters
        it searches the graph from that forward's outputs only, with static_graph it hooks each forward's
        outputs), and FSDP and DeepSpeed gather and release parameters and hook the backward per forward. So
        a distributed run keeps to one forward per backward, the use those wrappers are built and tested for.
        """
        from accelerate.utils import DistributedType

        padding = self.args.forward_chunk_padding
        distributed = self.accelerator.distributed_type
        if padding is not None and (distributed != DistributedType.NO or self.accelerator.num_processes > 1):
            log.info(
                "forward_chunk_padding=%s ignored: one forward per padded batch under %s (%d processes), whose "
                "wrapper expects one forward per backward",
                padding,
                distributed.value,
                self.accelerator.num_processes,
            )
            return None
        return padding

    def _get_train_sampler(self, train_dataset=None):
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(train_dataset)
        from .batching import LengthGroupedSeedSampler, seed_lengths

        dataset = train_dataset if train_dataset is not None else self.train_dataset
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # Grouped in units of the global batch: consecutive micro-batches (and accelerate's round-robin
        # shards) cut that order, so one optimizer step sees the same seeds however it is split.
        global_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedSeedSampler(seed_lengths(dataset["input_ids"]), global_batch, seed=seed)

    # -- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        n_seeds = inputs["seed_index"].shape[0]
        (logps, counts), out = self._response_logps(model, inputs)
        logps, counts = logps.view(n_seeds, 4), counts.view(n_seeds, 4)
        ref = inputs["ref_logps"].to(logps.device)
        # Triples, interleaved per seed: (en: col 0 over col 1), (tgt: col 2 over col 3).
        chosen, rejected = logps[:, [0, 2]].reshape(-1), logps[:, [1, 3]].reshape(-1)
        ref_chosen, ref_rejected = ref[:, [0, 2]].reshape(-1), ref[:, [1, 3]].reshape(-1)
        chosen_counts = counts[:, [0, 2]].reshape(-1)
        is_target = torch.tensor([False, True] * n_seeds, device=logps.device)
        nll = response_nll(chosen, chosen_counts, is_target, self.args.nll_on)
        nll = self._nll_over_window(nll, chosen_counts, is_target)
        loss, metrics = clo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            nll,
            beta=self.args.beta,
            lam=self.args.lam,
            directions=["en", "tgt"] * n_seeds,
        )
        if self._any_process(not torch.isfinite(loss).item()):
            # Stop before backward: the weights are still those of the last good step. Every process
            # learns of it (a process raising alone would leave the others waiting in the all-reduce).
            ids = self._seed_ids(inputs)
            raise FloatingPointError(
                f"non-finite CLO loss ({loss.item()}) at global step {self.state.global_step}, "
                f"seeds {ids}{self._where()}; metrics { {k: float(v) for k, v in metrics.items()} }"
            )
        for k, v in metrics.items():
            self._stored_metrics[k].append(float(v))
        return (loss, out) if return_outputs else loss

    def _response_logps(self, model, batch):
        """((B,) summed response log-probs, (B,) counts), model output: one forward of the batch, or with
        `forward_chunk_padding` one per chunk of rows of similar length (`batching.length_chunks`).

        A chunk is cut to its own width (right padding: a row's positions see only the row's own tokens,
        so the cut changes none of its log-probs), and the chunks' log-probs go back into the batch's row
        order, so the loss, and the one backward through every chunk's graph, are those of one forward.
        The output returned is then the last chunk's. Packed batches hold no padding and go in one forward.
        """
        if self.forward_chunk_padding is None or "attention_mask" not in batch or "segment_ids" in batch:
            return self._forward_logps(model, batch)
        from .batching import length_chunks

        lengths = batch["attention_mask"].sum(-1).tolist()
        chunks = length_chunks(lengths, self.forward_chunk_padding)
        if len(chunks) == 1 and lengths[chunks[0][0]] == batch["attention_mask"].shape[1]:
            return self._forward_logps(model, batch)
        device = batch["input_ids"].device
        logps, counts = [], []
        for rows in chunks:
            index, width = torch.tensor(rows, device=device), lengths[rows[0]]
            part = {k: batch[k][index, :width] for k in ("input_ids", "attention_mask", "labels")}
            (chunk_logps, chunk_counts), out = self._forward_logps(model, part)
            logps.append(chunk_logps)
            counts.append(chunk_counts)
        inverse = torch.argsort(torch.tensor([i for rows in chunks for i in rows], device=device))
        return (torch.cat(logps)[inverse], torch.cat(counts)[inverse]), out

    def _forward_logps(self, model, batch):
        """`_response_logps` of one forward. The LM head runs on the response positions only
        (`logits_to_keep` mask): prompt and padding rows of the (T, V) logits, and their gradient,
        are never built."""
        keep = response_positions(batch["labels"])
        segments = batch.get("segment_ids")  # present in packed batches (CLOCollator with padding_free)
        if segments is None:
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
            per_sequence = {}
        else:  # no attention mask: transformers derives the block-diagonal one from position_ids
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
            per_sequence = {"segments": segments, "n_sequences": len(SEQUENCE_ORDER) * batch["seed_index"].numel()}
        out = None
        if self._logits_to_keep_works:
            try:
                out = model(**inputs, logits_to_keep=keep)
            except TypeError as err:  # custom model code without the argument
                if "logits_to_keep" not in str(err):
                    raise
                log.warning(
                    "%s has no logits_to_keep argument: computing logits at every position", type(model).__name__
                )
            if out is not None and out.logits.ndim == 2:
                return packed_sequence_logps(out.logits, batch["labels"], keep, **per_sequence), out
            self._logits_to_keep_works = False  # rejected, or accepted and ignored (logits at every position)
        if out is None:
            out = model(**inputs)
        if segments is not None:
            return packed_sequence_logps(out.logits[keep], batch["labels"], keep, **per_sequence), out
        return sequence_logps(out.logits, batch["labels"]), out

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # A finite loss can still give non-finite gradients (an overflow in backward, an inf weight
        # reached only through the gradient). The optimizer step comes after this method returns:
        # stop here, so the weights stay those of the last good step. (Under DDP the gradients are
        # already all-reduced, so every process sees the same; DeepSpeed/FSDP keep their own grads.)
        if not self.accelerator.sync_gradients:  # checked once per optimizer step, on the summed gradients
            return loss
        self._nll_window_tokens = None  # the window is complete
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        # One fused pass (the per-tensor norms clip_grad_norm_ computes too), not one isfinite per tensor.
        if grads and not torch.isfinite(torch.stack(torch._foreach_norm(grads))).all():
            bad = [
                n
                for n, p in model.named_parameters()
                if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            raise FloatingPointError(
                f"non-finite gradient at global step {self.state.global_step}, seeds "
                f"{self._seed_ids(inputs)}{self._where()} (loss {loss.item()}): inf/nan in "
                f"{len(bad)} parameter tensors, first {bad[:3]} (or a gradient norm overflowing "
                "float32); the optimizer step was not taken"
            )
        return loss

    def _seed_ids(self, inputs) -> list[str]:
        return [self.train_dataset[int(i)]["seed_id"] for i in inputs["seed_index"]]

    def _where(self) -> str:
        world = self.accelerator.num_processes
        return f" on process {self.accelerator.process_index} of {world}" if world > 1 else ""

    def _any_process(self, flag: bool) -> bool:
        """True when `flag` is true on any process (one all-reduce of a scalar when distributed)."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor(float(flag), device=self.accelerator.device)
        return self.accelerator.reduce(t, reduction="sum").item() > 0

    def _nll_target_tokens(self, batch: dict) -> torch.Tensor:
        """Tokens that the NLL term averages over in a collated batch (target chosen, or every chosen)."""
        keep = response_positions(batch["labels"])
        if "segment_ids" in batch:  # packed: count per sequence, not per row
            n_sequences = len(SEQUENCE_ORDER) * batch["seed_index"].numel()
            counts = torch.bincount(batch["segment_ids"][keep], minlength=n_sequences)
        else:
            counts = keep.sum(-1)
        counts = counts.view(-1, len(SEQUENCE_ORDER))
        cols = [2] if self.args.nll_on == "target" else [0, 2]
        return counts[:, cols].sum()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The Trainer's micro-batches of one optimizer step, and the NLL's token count over all of
        them on every process: the denominator of the token mean over the global batch."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        tokens = sum((self._nll_target_tokens(b) for b in batch_samples), torch.tensor(0))
        tokens = tokens.to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        self._nll_window_tokens = tokens
        return batch_samples, num_items_in_batch

    def _nll_over_window(self, nll, counts, is_target):
        """Rescale the micro-batch's token-mean NLL so that what the optimizer sees (the Trainer divides
        by the window's micro-batches, DDP averages over processes) is the token mean over the global
        batch: sum of log-probs / all its target tokens, however the batch is split. Outside a
        training window (a direct compute_loss call) the micro-batch's own mean is kept."""
        if self._nll_window_tokens is None or not self.model.training:
            return nll
        keep = is_target if self.args.nll_on == "target" else torch.ones_like(is_target)
        local = counts[keep].sum().float()
        scale = local * self.current_gradient_accumulation_steps * self.accelerator.num_processes
        return nll * scale / self._nll_window_tokens.float().clamp(min=1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._stored_metrics:  # training logs: add the CLO terms averaged since last log
            names = sorted(self._stored_metrics)
            means = torch.tensor(
                [sum(self._stored_metrics[k]) / len(self._stored_metrics[k]) for k in names],
                dtype=torch.float64,
                device=self.accelerator.device,
            )
            if self.accelerator.num_processes > 1:
                # Every process holds the same number of triples per step, so the mean of the
                # per-process means is the global mean (for nll_loss: the rescaled per-process terms
                # average to the global token mean, see _nll_over_window). log() runs on every process.
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({k: float(v) for k, v in zip(names, means.tolist())})
            self._stored_metrics.clear()
        super().log(logs, start_time)


# --------------------------------------------------------------------------- entry points


def train_clo(model, tokenizer, pairs: list[dict], config: CLOConfig, callbacks: list | None = None):
    """Tokenise the cross-lingual pairs, run CLO, return (trainer, summary)."""
    examples, token_stats = tokenize_clo_pairs(pairs, tokenizer, config.max_length)
    memory, change = summary_callbacks()
    trainer = CLOTrainer(
        model=model,
        args=config,
        train_dataset=examples,
        processing_class=tokenizer,
        callbacks=[memory, change, *(callbacks or [])],
    )
    precision = precision_record(trainer.model, config)
    trainer.train(resume_from_checkpoint=resume_checkpoint(config))
    summary = {
        **token_stats,
        **memory.summary,
        **change.summary,
        "reference_forward_batches": trainer.reference_forward_batches,
        "reference_seeds_computed": trainer.reference_seeds_computed,
        "precision": precision,
    }
    return trainer, summary
