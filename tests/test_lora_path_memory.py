"""memory_estimate.lora_path_bytes against what autograd really keeps: a 2-layer Llama of deepseek-coder's
proportions (intermediate = 2.69 x hidden, kv = hidden) with PEFT LoRA on all linear layers, one forward on
CPU under bf16 autocast, every tensor saved for backward seen through torch.autograd.graph.saved_tensors_hooks.
CPU differs from CUDA in one known way, corrected below: its dropout keeps a 16-bit mask (x * noise) where
CUDA's fused dropout keeps a bool one, and it keeps none where the input needs no gradient (layer 0's q/k/v)."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.memory_estimate import ModelShape, Workload, lora_path_bytes, targeted

pytestmark = pytest.mark.slow  # loads torch, transformers and peft
H, I, LAYERS, TOKENS = 256, 688, 2, 128
SHAPE = ModelShape(H, I, LAYERS, 4, 4, 512)


def saved_bytes(dropout: float, fp32_adapters: bool) -> int:
    """Bytes of per-token tensors one forward keeps for backward (parameters and weight casts left out)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                                      max_position_embeddings=512)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.bfloat16)
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora, autocast_adapter_dtype=fp32_adapters)
    model.train()
    kept, storages = [], {}

    def pack(tensor):  # noqa: ANN001, ANN202
        kept.append(tensor)  # alive until the end: no storage is reused under another tensor
        if tensor.dim() >= 2 and tensor.shape[-2] == TOKENS:  # activations, not the LoRA weights' casts
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    ids = torch.randint(0, 512, (1, TOKENS))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(size for ptr, size in storages.items() if ptr not in params)


def test_fp32_adapters_keep_what_the_estimate_counts():
    extra = saved_bytes(0.0, fp32_adapters=True) - saved_bytes(0.0, fp32_adapters=False)
    assert extra == LAYERS * TOKENS * lora_path_bytes(SHAPE, Workload(1, TOKENS, adapter_bytes=4))


def test_lora_dropout_keeps_what_the_estimate_counts():
    extra = saved_bytes(0.05, fp32_adapters=False) - saved_bytes(0.0, fp32_adapters=False)
    inputs = sum(a for a, _ in targeted(SHAPE, Workload(1, TOKENS)).values())
    cuda = lora_path_bytes(SHAPE, Workload(1, TOKENS, lora_dropout=0.05))
    # CPU: a 2-byte mask instead of 1 on every targeted input, none for layer 0's q/k/v (input without gradient)
    assert extra == TOKENS * (LAYERS * (cuda + inputs) - 3 * H * 2)
