"""The precision rule, with torch's CUDA queries mocked: a bf16 GPU (A100, H100), a T4-like GPU
without bf16 (compute capability 7.5, where torch emulates bf16), and no GPU."""

from types import SimpleNamespace

import pytest
import torch

from clo_utils import precision
from clo_utils.models import resolve_dtype
from clo_utils.precision import FP32_STATE_SHARE, Gpu, choose_precision, fp32_state_bytes
from clo_utils.train_setup import training_profile

GiB = 2**30
A100 = ("NVIDIA A100-SXM4-40GB", 40 * GiB, (8, 0))
H100 = ("NVIDIA H100 80GB HBM3", 80 * GiB, (9, 0))
T4 = ("Tesla T4", 15 * GiB, (7, 5))
# Qwen2.5-1.5B-Instruct attention-only, and SmolLM2-135M attention-only (weights, trainable weights).
QWEN_1_5B = (1_543_714_304, 154_198_016)
SMOLLM_135M = (134_515_008, 26_542_080)


@pytest.fixture
def cuda(monkeypatch):
    """mock(name, memory, capability) makes torch see that GPU; mock(None) no GPU. is_bf16_supported
    answers as torch does on CUDA: native from capability 8.0, and True on older GPUs unless
    including_emulation=False (a T4 emulates bf16)."""

    def mock(gpu):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu is not None)
        if gpu is None:
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
            return
        name, memory, (major, minor) = gpu
        props = SimpleNamespace(name=name, total_memory=memory, major=major, minor=minor)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
        monkeypatch.setattr(
            torch.cuda, "is_bf16_supported", lambda including_emulation=True: major >= 8 or including_emulation
        )

    return mock


class Model(torch.nn.Module):
    """A model with `n` weights of which `trainable` require gradients, without allocating them."""

    def __init__(self, n: int, trainable: int):
        super().__init__()
        self.a = torch.nn.Parameter(torch.empty(trainable, device="meta"))
        self.b = torch.nn.Parameter(torch.empty(n - trainable, device="meta"), requires_grad=False)


@pytest.mark.parametrize("gpu", [A100, H100])
def test_a_gpu_with_native_bf16_trains_under_bf16_autocast_whatever_the_model(cuda, gpu):
    cuda(gpu)
    for counts in (SMOLLM_135M, QWEN_1_5B, (None, None)):
        choice = choose_precision("auto", *counts)
        assert (choice.mode, choice.device, choice.gpu) == ("bf16", "gpu", gpu[0])
    profile = training_profile("auto", model=Model(*QWEN_1_5B))
    assert (profile["bf16"], profile["fp16"], profile["use_cpu"], profile["forward_chunk_padding"]) == (
        True,
        False,
        False,
        None,
    )
    assert resolve_dtype("auto") == resolve_dtype("auto", inference=True) == torch.bfloat16


def test_a_t4_gets_fp16_with_loss_scaling_for_a_large_model_and_fp32_for_a_small_one(cuda):
    cuda(T4)
    assert torch.cuda.is_bf16_supported()  # torch's default answer on a T4: emulated bf16 counts
    big = choose_precision("auto", *QWEN_1_5B)
    assert big.mode == "fp16" and "no native bf16 (compute capability 7.5)" in big.reason
    assert "7.5 GiB > 10% of its 15.0 GiB" in big.reason  # 4 * 1.54e9 + 12 * 0.154e9 bytes
    small = choose_precision("auto", *SMOLLM_135M)
    assert small.mode == "fp32" and "0.8 GiB <= 10%" in small.reason
    assert choose_precision("gpu").mode == "fp16"  # model size unknown: fp32 is not assumed to fit
    fp16 = training_profile("gpu", model=Model(*QWEN_1_5B), clo=False)
    assert fp16 == {"use_cpu": False, "bf16": False, "fp16": True, "gradient_checkpointing": False}
    fp32 = training_profile("auto", model=Model(*SMOLLM_135M))
    assert (fp32["bf16"], fp32["fp16"], fp32["use_cpu"]) == (False, False, False)
    # Weights load in fp32 for training (fp16 autocast keeps them as master weights), fp16 for inference.
    assert resolve_dtype("auto") == torch.float32 and resolve_dtype("auto", inference=True) == torch.float16


def test_the_fp32_threshold_is_a_share_of_the_gpu_memory_of_the_fp32_training_state():
    n, t = 10_000, 1_000
    assert fp32_state_bytes(n, t) == 4 * n + 4 * t + 8 * t  # weights, gradients, AdamW's two moments
    at_limit = Gpu("T4-like", memory_bytes=int(fp32_state_bytes(n, t) / FP32_STATE_SHARE), bf16=False)
    assert choose_precision("gpu", n, t, gpu=at_limit).mode == "fp32"
    assert choose_precision("gpu", n + 1, t, gpu=at_limit).mode == "fp16"
    assert choose_precision("gpu", n, t + 1, gpu=at_limit).mode == "fp16"


def test_no_gpu_is_fp32_on_the_cpu_and_device_gpu_without_one_is_a_clear_error(cuda):
    cuda(None)
    choice = choose_precision("auto", *QWEN_1_5B)
    assert (choice.mode, choice.device) == ("fp32", "cpu")
    assert training_profile("auto")["use_cpu"] and not training_profile("auto")["bf16"]
    assert resolve_dtype("auto") == resolve_dtype("auto", inference=True) == torch.float32
    with pytest.raises(ValueError, match="device='gpu' but torch finds no CUDA GPU"):
        training_profile("gpu")
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'gpu', got 'tpu'"):
        choose_precision("tpu")


def test_device_cpu_is_fp32_even_with_a_gpu(cuda):
    cuda(A100)
    choice = choose_precision("cpu", *QWEN_1_5B)
    assert (choice.mode, choice.device, choice.reason) == ("fp32", "cpu", "device=cpu")


def test_the_record_says_when_the_arguments_overrule_the_rule(cuda):
    cuda(T4)
    model = Model(*QWEN_1_5B)
    args = SimpleNamespace(bf16=False, fp16=True, use_cpu=False)
    record = precision.precision_record(model, args)
    assert record["mode"] == "fp16" and record["loss_scaling"] and record["autocast"] == "fp16"
    assert record["reason"].startswith("Tesla T4 has no native bf16") and record["gpu"] == "Tesla T4"
    assert (record["trainable_dtype"], record["frozen_dtype"]) == (["float32"], ["float32"])
    forced = precision.precision_record(model, SimpleNamespace(bf16=True, fp16=False, use_cpu=False))
    assert forced["mode"] == "bf16" and forced["reason"].startswith(
        "set by the training arguments (the rule says fp16"
    )
