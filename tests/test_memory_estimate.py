"""The per-GPU memory estimate and the sharding decision (issue 21 item 2; pure functions)."""
from __future__ import annotations

import re

import pytest

from ade_mlflow_plugin.memory_estimate import (EVAL_LOGITS_CAP, GENERATE_BATCH, GIB, ModelShape, Workload,
                                               activation_bytes, after_gib, decide, lora_path_bytes, estimate,
                                               eval_bytes, generate_batch, generation_bytes, lora_params)

# deepseek-coder's published config.json figures.
CODER_1_3B = ModelShape.from_config({"hidden_size": 2048, "intermediate_size": 5504, "num_hidden_layers": 24,
                                     "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32256})
CODER_6_7B = ModelShape(4096, 11008, 32, 32, 32, 32256)
CODER_33B = ModelShape(7168, 19200, 62, 56, 8, 32256)


@pytest.mark.parametrize("shape,billions", [(CODER_1_3B, 1.35), (CODER_6_7B, 6.74), (CODER_33B, 33.3)])
def test_parameter_counts_match_the_published_sizes(shape, billions):
    assert shape.params / 1e9 == pytest.approx(billions, rel=0.01)


def test_lora_counts_r_times_in_plus_out_of_each_targeted_linear():
    work = Workload(1, 128, lora_r=8, target_modules="q_proj,v_proj")
    assert lora_params(CODER_1_3B, work) == 24 * 8 * ((2048 + 2048) * 2)
    assert lora_params(CODER_1_3B, Workload(1, 128, lora_r=8)) > lora_params(CODER_1_3B, work)


def test_lora_dropout_keeps_a_dropped_input_and_a_mask_per_targeted_linear():
    # PEFT: lora_B(lora_A(dropout(x))), one dropout per targeted linear: its 16-bit output (lora_A's saved input)
    # and its bool mask, 3 bytes per input feature and token; x itself is then kept by nobody (the frozen base
    # does not save it) but o_proj's input, which attention keeps: q/k/v's, gate/up's and down's copies go.
    # (Checked on CPU with autograd's saved tensors: tests/test_lora_path_memory.py.)
    h, i = 2048, 5504
    plain, dropped = Workload(1, 2048), Workload(1, 2048, lora_dropout=0.05)
    assert lora_path_bytes(CODER_1_3B, plain) == 0
    assert lora_path_bytes(CODER_1_3B, dropped) == (6 * h + i) * 3 - (2 * h + i) * 2
    assert lora_path_bytes(CODER_1_3B, Workload(1, 2048, target_modules="q_proj,v_proj", lora_dropout=0.1)) == \
        2 * h * 3 - h * 2
    extra = activation_bytes(CODER_1_3B, dropped) - activation_bytes(CODER_1_3B, plain)
    assert extra == 24 * 2048 * (14 * h + i)  # every layer, every token
    assert extra / activation_bytes(CODER_1_3B, plain) == pytest.approx(0.40, abs=0.01)  # TrainingConfig's ~40 %
    # a recomputed layer keeps its input only: the dropout costs once, in the layer being recomputed
    recomputed = [activation_bytes(CODER_1_3B, Workload(1, 2048, checkpointed_layers=24, lora_dropout=p))
                  for p in (0.0, 0.05)]
    assert recomputed[1] - recomputed[0] == 2048 * (14 * h + i)


def test_fp32_adapters_keep_autocasts_copy_of_each_linears_input():
    # fp32 LoRA weights (no bf16 on the GPU, or bf16_adapters=false): PEFT casts x to fp32 and autocast casts
    # it back to 16 bits for lora_A, which keeps that copy (2 bytes per input feature); x's own copy goes
    h, i = 2048, 5504
    assert lora_path_bytes(CODER_1_3B, Workload(1, 2048, adapter_bytes=4)) == (6 * h + i) * 2 - (2 * h + i) * 2
    # with dropout the dropped-out copy is what lora_A keeps, as with 16-bit adapters
    assert lora_path_bytes(CODER_1_3B, Workload(1, 2048, adapter_bytes=4, lora_dropout=0.1)) == \
        lora_path_bytes(CODER_1_3B, Workload(1, 2048, lora_dropout=0.1))


def test_quantization_and_checkpointing_shrink_what_they_should():
    plain = estimate(CODER_6_7B, Workload(1, 2048))
    qlora = estimate(CODER_6_7B, Workload(1, 2048, quantization="4bit"))
    assert qlora.weights < plain.weights / 3 and qlora.activations == plain.activations
    recomputed = activation_bytes(CODER_6_7B, Workload(1, 2048, checkpointed_layers=32))
    assert recomputed < plain.activations / 10
    assert estimate(CODER_6_7B, Workload(1, 2048, fused_loss=True)).loss == 0
    # twice the batch: twice the activations, the same weights
    double = estimate(CODER_6_7B, Workload(2, 2048))
    assert double.activations == 2 * plain.activations and double.weights == plain.weights


def test_sharding_splits_weights_and_lora_state_not_activations():
    plain, sharded = estimate(CODER_6_7B, Workload(1, 2048)), estimate(CODER_6_7B, Workload(1, 2048), shards=4)
    # training/sharding.py shards the base weights; the adapter and its AdamW state stay on every GPU
    assert sharded.weights == plain.weights / 4 and sharded.lora == plain.lora
    assert sharded.activations == plain.activations and sharded.gather > 0


def test_a_quantized_base_is_never_sharded():
    qlora = Workload(4, 2048, quantization="4bit")
    decision = decide("auto", CODER_33B, qlora, "ml.p4d.24xlarge")
    assert decision.sharded is None and not decision.fsdp
    assert decision.refused and "sharding=auto" not in decision.message and "more GPUs" not in decision.message
    # (fsdp with quantization is refused by TrainingConfig; the job would train it unsharded)
    asked = decide("fsdp", CODER_1_3B, Workload(1, 512, quantization="4bit"), "ml.g5.12xlarge")
    assert not asked.refused and not asked.fsdp and "fits unsharded" in asked.message
    assert not decide("auto", CODER_1_3B, Workload(1, 512, quantization="4bit"), "ml.g5.12xlarge").refused


def test_fsdp_on_one_gpu_trains_unsharded_and_is_held_against_it():
    decision = decide("fsdp", CODER_1_3B, Workload(1, 512), "ml.g5.2xlarge")
    assert not decision.refused and not decision.fsdp and "fits unsharded" in decision.message
    too_big = decide("fsdp", CODER_6_7B, Workload(4, 2048), "ml.g5.2xlarge")
    assert too_big.refused and float(re.search(r"(-?[\d.]+) GiB too much", too_big.message).group(1)) > 0


def test_a_model_one_gpu_cannot_hold_shards_over_the_instance():
    # 33B's bf16 base (~62 GiB) fits no A100 40 GB; sharded over the 8 of a p4d it trains, evaluates sharded on
    # every rank, and rank 0 publishes from host memory (training/sharding.py): no GPU holds the whole model
    on_a100_40 = decide("auto", CODER_33B, Workload(1, 2048, checkpointed_layers=62), "ml.p4d.24xlarge")
    assert on_a100_40.fsdp and not on_a100_40.refused, on_a100_40.message
    assert on_a100_40.plain.needed_gib > on_a100_40.gpu_gib
    assert after_gib(CODER_33B, Workload(1, 2048, checkpointed_layers=62), on_a100_40.sharded) <= on_a100_40.gpu_gib
    on_h200 = decide("auto", CODER_33B, Workload(2, 2048, fused_loss=True, eval_new_tokens=64), "ml.p5e.48xlarge")
    assert on_h200.fsdp and not on_h200.refused


def test_the_evals_after_training_must_fit_too():
    # eval_loss: batches of 8 rows x 2048, but their logits (10 bytes each) stay under 1 GiB, one row at least
    # (training/evaluation.py); exact_match: one prompt's KV cache and prefill at least (the job takes as many
    # prompts as fit), unless the model is sharded (it does not generate)
    assert eval_bytes(CODER_1_3B, Workload(1, 256)) == 8 * 256 * 32256 * 10  # 8 rows of 256: under the cap
    assert eval_bytes(CODER_1_3B, Workload(1, 2048)) == EVAL_LOGITS_CAP
    kv = (2048 + 64) * (2 * 24 * 2048 * 2 + 3 * 5504 * 2)
    assert eval_bytes(CODER_1_3B, Workload(1, 2048, eval_new_tokens=64)) == max(kv, EVAL_LOGITS_CAP)
    assert eval_bytes(CODER_1_3B, Workload(1, 2048, eval_new_tokens=64), generates=False) == EVAL_LOGITS_CAP
    qwen_1_5b = ModelShape(1536, 8960, 28, 12, 2, 151936, tied_embeddings=True)  # 152k vocab: one row is 2.9 GiB
    assert eval_bytes(qwen_1_5b, Workload(1, 2048)) == 2048 * 151936 * 10
    decision = decide("auto", qwen_1_5b, Workload(1, 2048, fused_loss=True, checkpointed_layers=28), "ml.g5.2xlarge")
    assert not decision.refused, decision.message
    assert after_gib(qwen_1_5b, Workload(1, 2048), decision.plain) > decision.plain.weights / GIB  # counted


def test_auto_keeps_a_model_that_fits_unsharded():
    # The defaults (batch 4 x 2048, fused loss on a GPU) on one 24 GB A10G, as config/training.py promises.
    decision = decide("auto", CODER_1_3B, Workload(4, 2048, fused_loss=True), "ml.g5.2xlarge",
                      model_name="deepseek-coder-1.3b")
    assert not decision.fsdp and not decision.refused
    assert decision.message.startswith("deepseek-coder-1.3b: ~") and "fits unsharded" in decision.message


def test_auto_shards_a_model_that_fits_only_sharded():
    work = Workload(4, 512, fused_loss=True)
    decision = decide("auto", CODER_6_7B, work, "ml.g5.48xlarge")
    assert decision.fsdp and not decision.refused
    assert decision.sharded.needed_gib <= decision.gpu_gib < decision.plain.needed_gib
    assert "sharded (FSDP) over ml.g5.48xlarge (22 GiB per GPU, 8 GPU(s))" in decision.message
    # eight single-GPU hosts shard as well (FSDP spans the hosts)
    assert decide("auto", CODER_6_7B, work, "ml.g5.2xlarge", instance_count=8).fsdp


def test_a_plan_that_cannot_fit_even_sharded_is_refused_with_how_much_and_what_to_change():
    decision = decide("auto", CODER_33B, Workload(1, 2048), "ml.g5.2xlarge", model_name="deepseek-coder-33b")
    assert decision.refused and not decision.fsdp
    message = decision.message
    assert "\n" not in message and "unsharded on ml.g5.2xlarge" in message
    too_much = decision.plain.needed_gib - decision.gpu_gib
    assert f"{too_much:.1f} GiB too much" in message
    # 62 GiB of bf16 weights: a smaller step cannot help, nor a 4-bit base (~17 GiB, and the evals after
    # training need ~5 GiB more than the 22 GiB card has): only a bigger card
    assert message.endswith("; use an instance type with more GPU memory or more GPUs (or instance_count > 1)")
    smaller_step = decide("auto", CODER_1_3B, Workload(8, 2048), "ml.g5.2xlarge").message
    for fix in ("smaller batch_size (now 8)", "gradient_checkpointing=true"):
        assert fix in smaller_step
    recomputed = decide("auto", CODER_1_3B, Workload(16, 2048, checkpointed_layers=24), "ml.g4dn.xlarge").message
    assert "gradient_checkpointing=true" not in recomputed  # already on


def test_sharding_none_is_refused_when_only_sharding_fits_and_says_so():
    decision = decide("none", CODER_6_7B, Workload(4, 512, fused_loss=True), "ml.g5.48xlarge")
    assert decision.refused and "sharding=auto (sharded: ~" in decision.message


def test_fsdp_asked_for_shards_even_when_the_plain_path_fits():
    decision = decide("fsdp", CODER_1_3B, Workload(1, 512), "ml.g5.12xlarge")
    assert decision.fsdp and decision.sharded.needed_gib < decision.plain.needed_gib


def test_an_unknown_instance_type_is_named():
    with pytest.raises(ValueError, match="ml.x9.huge"):
        decide("auto", CODER_1_3B, Workload(1, 512), "ml.x9.huge")


def test_the_line_reads_in_gib():
    line = estimate(CODER_1_3B, Workload(1, 512)).line()
    assert line.startswith("~") and "GiB per GPU (weights 2.5" in line
    assert GIB == 2 ** 30


def test_generation_takes_as_many_prompts_as_the_free_memory_holds():
    one = generation_bytes(CODER_6_7B, 2112)
    assert one == 2112 * (2 * 32 * 4096 * 2 + 3 * 11008 * 2)  # KV cache (bf16, every layer) + the prefill's MLP
    assert generation_bytes(CODER_6_7B, 2112, prompts=16) / GIB == pytest.approx(18.6, abs=0.1)  # 16 would need
    assert generate_batch(CODER_6_7B, 2112, 100 * GIB) == GENERATE_BATCH  # never more than 16
    assert generate_batch(CODER_6_7B, 2112, 5 * one * 1.1) == 5  # the allocator's slack left free
    assert generate_batch(CODER_6_7B, 2112, 5 * one) == 4
    assert generate_batch(CODER_6_7B, 2112, 0) == 1  # one at least: the plan counted it
    # The plan holds one prompt's generation (eval_bytes), so the canonical QLoRA case fits one A10G.
    qlora = Workload(1, 2048, quantization="4bit", eval_new_tokens=64)
    assert eval_bytes(CODER_6_7B, qlora) == max(one, EVAL_LOGITS_CAP)
