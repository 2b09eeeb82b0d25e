"""The reference half of the CLO objective: log-probs of the starting model, computed once and cached.

Before training, the model in eval mode (adapters off for LoRA, the training autocast on) scores every
sequence of every seed; the values go to an on-disk cache keyed by the reference weights, the
conditions that change them and each seed's tokens, so reruns and nested budgets reuse them.
CLOTrainer takes the pass from ReferencePassMixin.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import torch

from .common.cache import DiskCache, cache_key, default_cache_dir
from .sequences import SEQUENCE_ORDER, pad_sequences

log = logging.getLogger(__name__)

REFERENCE_CACHE_VERSION = "clo-ref-v3"  # in every reference cache key: a changed computation never reuses old values


def model_fingerprint(model) -> str:
    """sha256 of the reference weights (adapter weights excluded: with LoRA the reference is the
    model with adapters disabled). Same scheme as trl.trainer.utils.hash_module."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if "lora_" in name:
            continue
        tensor = tensor.detach().cpu()
        h.update(name.encode() + str(tensor.dtype).encode())
        if tensor.dtype not in (torch.float32, torch.float64, torch.int64, torch.int32):
            tensor = tensor.float()  # numpy has no bf16/fp8
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


class ReferencePassMixin:
    """The reference pass of CLOTrainer (needs its model, args, accelerator, pad_token_id and _response_logps)."""

    def compute_reference_logps(self, examples: list[dict]) -> torch.Tensor:
        """(n_seeds, 4) fp32 reference log-probs, each seed read from the disk cache when present.

        The cache holds one record per seed, keyed by the reference weights and that seed's tokens,
        so a rerun computes nothing and the nested budgets of a data-efficiency sweep (1,600 of the
        3,200 of the 6,400) compute each seed's reference pass once.
        """
        self._check_whole_weights()
        model_key = model_fingerprint(self.model) + "|" + self.reference_conditions()
        keys = [cache_key(REFERENCE_CACHE_VERSION, model_key, ex["input_ids"], ex["labels"]) for ex in examples]
        self.reference_cache_path = (
            Path(self.args.ref_cache_dir or default_cache_dir() / "ref_logps") / "ref_logps.sqlite"
        )
        with DiskCache(self.reference_cache_path) as store:
            cached = store.get_many(keys)
        ref = torch.tensor([cached.get(k, [float("nan")] * len(SEQUENCE_ORDER)) for k in keys], dtype=torch.float32)
        todo = [ex for ex, k in zip(examples, keys) if k not in cached]
        log.info(
            "reference log-probs: %d of %d seeds cached at %s",
            len(examples) - len(todo),
            len(examples),
            self.reference_cache_path,
        )
        if todo:
            self._reference_pass(todo, ref)
            if self.accelerator.is_main_process:  # one transaction: a kill keeps all of it or none
                with DiskCache(self.reference_cache_path) as store:
                    store.put_many({keys[ex["index"]]: ref[ex["index"]].tolist() for ex in todo})
            self.accelerator.wait_for_everyone()
        if torch.isnan(ref).any():
            raise RuntimeError("reference pass left seeds without log-probs")
        return ref

    def reference_conditions(self) -> str:
        """What changes the reference log-probs besides weights and tokens, for the cache key: the
        autocast dtype, the device type, the attention implementation and the library versions."""
        import transformers

        attn = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        return (
            f"mixed_precision={self.accelerator.mixed_precision}|device={self.accelerator.device.type}|"
            f"attn={attn}|torch={torch.__version__}|transformers={transformers.__version__}"
        )

    def _reference_pass(self, todo: list[dict], ref: torch.Tensor) -> None:
        """Fill ref[index] for the seeds in `todo` with the starting model (adapters off for LoRA).

        Each sequence's log-prob depends on that sequence alone, so the pass batches single sequences,
        not seeds: sorted by length (`batching.sequence_batches`), each row is padded only to rows of
        nearly its own length, and each log-prob goes back to ref[seed, column].
        """
        from .batching import sequence_batches

        rows_per_batch = len(SEQUENCE_ORDER) * self.args.precompute_ref_batch_size
        batches = sequence_batches([[len(ids) for ids in ex["input_ids"]] for ex in todo], rows_per_batch)
        rows = [
            {
                "index": todo[i]["index"],
                "column": c,
                "input_ids": todo[i]["input_ids"][c],
                "labels": todo[i]["labels"][c],
            }
            for batch in batches
            for i, c in batch
        ]

        def collate(features):
            batch = pad_sequences(
                [f["input_ids"] for f in features], [f["labels"] for f in features], self.pad_token_id
            )
            return {
                **batch,
                "index": torch.tensor([f["index"] for f in features]),
                "column": torch.tensor([f["column"] for f in features]),
            }

        # Every batch but the last is full, so the loader cuts `rows` back into `batches`.
        loader = torch.utils.data.DataLoader(rows, batch_size=rows_per_batch, shuffle=False, collate_fn=collate)
        loader = self.accelerator.prepare(loader)
        self._place_for_reference_pass()
        was_training = self.model.training
        self.model.eval()
        adapters_off = (
            self.model.disable_adapter() if hasattr(self.model, "disable_adapter") else contextlib.nullcontext()
        )
        # The training forward runs under accelerate's autocast (bf16 on the GPU profile); the
        # reference runs under the same one, so that policy and reference agree at step 0.
        with torch.no_grad(), adapters_off, self.accelerator.autocast():
            for batch in loader:
                (logps, _), _ = self._response_logps(self.model, batch)
                index, column, logps = self.accelerator.gather_for_metrics((batch["index"], batch["column"], logps))
                ref[index.cpu(), column.cpu()] = logps.float().cpu()
                self.reference_forward_batches += 1
        self.reference_seeds_computed += len(todo)
        self.model.train(was_training)

    def _check_whole_weights(self) -> None:
        """The reference pass and its cache key need the whole weights on this process."""
        for name, p in self.model.named_parameters():
            if hasattr(p, "ds_id") or p.device.type == "meta":
                raise RuntimeError(
                    f"parameter {name} is partitioned (DeepSpeed ZeRO-3 zero3_init_flag) or on the meta device "
                    "(FSDP cpu_ram_efficient_loading): CLO computes reference log-probs and their cache key from "
                    "the whole model before training. Set zero3_init_flag: false / fsdp_cpu_ram_efficient_loading: "
                    "false (params/accelerate/*.yaml), or precompute them in a DDP/ZeRO-2 run (they are cached)."
                )

    def _place_for_reference_pass(self) -> None:
        # Under DeepSpeed or FSDP the Trainer leaves the model where it was loaded (CPU) until
        # train() wraps it, but the prepared loader puts batches on this process's device.
        if getattr(self, "is_model_parallel", False):  # device_map spreads it over GPUs: leave it there
            return
        device = self.accelerator.device
        first = next(self.model.parameters())
        if first.device != device:
            log.info("reference pass: moving the model from %s to %s", first.device, device)
            self.model.to(device)
