"""The fit check at submission (backend/fit.py) and where the model's shape comes from (backend/fit_models.py):
no job runs here; the `mlflow run` paths are in test_fit_cli.py."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from ade_mlflow_plugin.backend.fit import Gpus, plan_fit
from ade_mlflow_plugin.backend.fit_models import KNOWN_MODELS, find_shape
from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.config.training import TrainingConfig
from ade_mlflow_plugin.errors import ConfigError
from ade_mlflow_plugin.memory_estimate import ModelShape

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300}
CODER_33B = "deepseek-ai/deepseek-coder-33b-instruct"
CODER_6_7B = "deepseek-ai/deepseek-coder-6.7b-instruct"


def cloud(**overrides) -> CloudTrainingConfig:
    return CloudTrainingConfig.from_backend_config({"role_arn": ROLE, "bucket": "ade-fit", "region": "us-east-1",
                                                    **overrides})


def training(**params) -> TrainingConfig:
    return TrainingConfig.from_params({"codebase": "src", **{k: str(v) for k, v in params.items()}})


def model_folder(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


# ---- where the shape comes from ---------------------------------------------------------------------------

def test_a_local_model_folder_is_read_from_its_config_json(tmp_path):
    found = find_shape(str(model_folder(tmp_path / "tiny", TINY)))
    assert found.shape == ModelShape(64, 128, 2, 4, 2, 300) and found.source == f"config.json of {tmp_path / 'tiny'}"


def test_a_hub_name_in_the_hugging_face_cache_is_read_there_before_the_table(tmp_path, monkeypatch):
    # huggingface_hub's layout: models--ORG--NAME/refs/main names the snapshot folder
    repo = tmp_path / "hub" / "models--deepseek-ai--deepseek-coder-33b-instruct"
    model_folder(repo / "snapshots" / "abc123", TINY)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    found = find_shape(CODER_33B)
    assert found.shape.hidden == 64 and "in the Hugging Face cache" in found.source
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert find_shape(CODER_33B).shape == KNOWN_MODELS[CODER_33B]


def test_the_table_matches_the_published_sizes(no_hub_cache):
    sizes = {"deepseek-ai/deepseek-coder-1.3b-base": 1.35, "deepseek-ai/deepseek-coder-6.7b-instruct": 6.74,
             CODER_33B: 33.3, "qwen/qwen2.5-coder-1.5b": 1.54, "qwen/qwen2.5-coder-7b-instruct": 7.61,
             "qwen/qwen2.5-coder-32b-instruct": 32.8, "codellama/codellama-34b-hf": 33.7}
    for name, billions in sizes.items():
        assert KNOWN_MODELS[name].params / 1e9 == pytest.approx(billions, rel=0.02), name
    assert find_shape("Qwen/Qwen2.5-Coder-7B-Instruct").known  # hub names are matched in any case


def test_an_unknown_model_or_a_non_llama_config_says_why(tmp_path, no_hub_cache):
    unknown = find_shape("someorg/mystery-coder-7b")
    assert not unknown.known and "neither in this machine's Hugging Face cache nor in the table" in unknown.source
    gpt2 = find_shape(str(model_folder(tmp_path / "gpt2", {"model_type": "gpt2", "n_embd": 768})))
    assert not gpt2.known and "model_type gpt2) is not a Llama-style decoder's" in gpt2.source


def _mlflow_model(folder: Path, flavor: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"transformers": flavor}}))
    return folder


def test_an_mlflow_model_folder_reads_its_weights_or_its_adapters_recorded_base(tmp_path, no_hub_cache):
    merged = _mlflow_model(tmp_path / "merged", {"model_binary": "model"})
    model_folder(merged / "model", TINY)
    assert find_shape(str(merged)).shape.vocab == 300
    base = model_folder(tmp_path / "base", {**TINY, "vocab_size": 512})
    adapter = _mlflow_model(tmp_path / "adapter", {"peft_adaptor": "peft", "local_base_model_path": str(base)})
    assert find_shape(str(adapter)).shape.vocab == 512
    hub_based = _mlflow_model(tmp_path / "hub-adapter", {"peft_adaptor": "peft", "source_model_name": CODER_33B})
    assert find_shape(str(hub_based)).shape == KNOWN_MODELS[CODER_33B]


def test_a_registered_version_is_read_from_two_small_files(tmp_path, tracking_uri, no_hub_cache):
    import mlflow

    name = f"ade-fit-{uuid.uuid4().hex[:8]}"
    merged = _mlflow_model(tmp_path / "logged", {"model_binary": "model"})
    model_folder(merged / "model", TINY)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(merged), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", name).version
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    found = find_shape(f"models:/{name}@champion")
    assert found.shape == ModelShape(64, 128, 2, 4, 2, 300)
    assert found.source == f"config.json of models:/{name}@champion"
    missing = find_shape(f"models:/{name}@nobody")
    assert not missing.known and f"cannot read models:/{name}@nobody's config.json" in missing.source


# ---- the plan: line, sharding, refusal ---------------------------------------------------------------------

def test_the_defaults_fit_one_a10g_unsharded(no_hub_cache):
    plan = plan_fit(cloud(), training())
    assert plan.line.startswith("Memory estimate: deepseek-ai/deepseek-coder-1.3b-instruct: ~")
    assert "on ml.g5.2xlarge (22 GiB per GPU, 1 GPU(s)): fits unsharded; sharding=auto -> none" in plan.line
    assert "\n" not in plan.line and plan.sharding == "none"
    assert plan.tags["ade.sharding"] == "none" and plan.tags["ade.memory_fit"] == "unsharded"
    assert float(plan.tags["ade.memory_estimate_gib"]) < 22 and plan.tags["ade.memory_gpu_gib"] == "22"


def test_auto_shards_a_model_one_gpu_of_the_instance_cannot_hold(no_hub_cache):
    plan = plan_fit(cloud(instance_type="ml.p5e.48xlarge"), training(base_model=CODER_33B, batch_size=2))
    assert plan.sharding == "fsdp" and plan.tags["ade.memory_fit"] == "sharded"
    assert "sharded (FSDP) over ml.p5e.48xlarge (139.8 GiB per GPU, 8 GPU(s)); unsharded it would need" in plan.line
    assert plan.line.endswith("; sharding=auto -> fsdp")


def test_a_model_no_gpu_of_the_instance_holds_shards_over_all_of_them(no_hub_cache):
    # 33B's bf16 base (~62 GiB) fits none of the 8 A100 40 GB of a p4d: sharded it trains and evaluates there,
    # and rank 0 publishes from host memory (training/sharding.py), so no GPU needs the whole model
    plan = plan_fit(cloud(instance_type="ml.p4d.24xlarge"),
                    training(base_model=CODER_33B, batch_size=1, gradient_checkpointing="true"))
    assert plan.sharding == "fsdp" and plan.tags["ade.memory_fit"] == "sharded", plan.line


def test_sharding_fsdp_on_one_gpu_trains_unsharded_and_fits(no_hub_cache):
    plan = plan_fit(cloud(instance_type="ml.g5.2xlarge"), training(sharding="fsdp"))
    assert "fits unsharded" in plan.line and plan.sharding == "fsdp"  # the job trains one process unsharded
    # what does not fit one GPU unsharded is refused saying why sharding=fsdp did not help
    with pytest.raises(ConfigError) as refused:
        plan_fit(cloud(instance_type="ml.g5.2xlarge"), training(base_model=CODER_33B, sharding="fsdp"))
    assert "unsharded (sharding=fsdp needs more than one GPU in all) on ml.g5.2xlarge" in refused.value.message
    assert refused.value.message.endswith("more GPUs (or instance_count > 1)")


def test_what_cannot_fit_even_sharded_is_refused_with_how_much_and_what_to_change(no_hub_cache):
    with pytest.raises(ConfigError) as refused:
        plan_fit(cloud(instance_type="ml.g5.xlarge"), training(base_model=CODER_33B, batch_size=16))
    message = refused.value.message
    assert "\n" not in message and refused.value.exit_code == 2
    assert message.startswith(f"{CODER_33B} at batch_size 16 x 2048 tokens needs ~")
    # 62 GiB of weights on a 22 GiB card: a smaller step cannot help, nor 4-bit (its evals after training overflow)
    assert message.endswith("GiB too much; use an instance type with more GPU memory or more GPUs (or instance_count > 1)")


def test_a_big_vocabulary_no_longer_makes_the_evals_after_training_bind(no_hub_cache):
    # Qwen2.5-Coder's 152k vocabulary: whole eval logits were ~23 GiB at 2048 tokens, more than a 22 GiB A10G;
    # evaluation.eval_loss keeps them under 1 GiB (one row at least), so the defaults fit
    plan = plan_fit(cloud(), training(base_model="qwen/qwen2.5-coder-1.5b"))
    assert "GiB too much" not in plan.line and plan.sharding == "none", plan.line


def test_sharding_none_or_fsdp_as_asked_is_kept(no_hub_cache):
    fsdp = plan_fit(cloud(instance_type="ml.g5.12xlarge"), training(sharding="fsdp"))
    assert fsdp.sharding == "fsdp" and fsdp.line.endswith("; sharding=fsdp")
    coder_6_7b = {"base_model": "deepseek-ai/deepseek-coder-6.7b-base", "max_seq_len": 512, "sharding": "none"}
    with pytest.raises(ConfigError, match=r"use sharding=auto \(sharded: ~"):
        plan_fit(cloud(instance_type="ml.g5.48xlarge"), training(**coder_6_7b, checkpoint_layers=0))
    # unsharded as asked, it fits with layers recomputed (checkpoint_layers auto)
    assert plan_fit(cloud(instance_type="ml.g5.48xlarge"), training(**coder_6_7b)).checkpoint_layers


def test_an_unknown_model_is_skipped_and_auto_left_to_the_job(no_hub_cache):
    plan = plan_fit(cloud(), training(base_model="someorg/mystery-coder-7b"))
    assert plan.line.startswith("Memory estimate: skipped: 'someorg/mystery-coder-7b' is neither")
    assert plan.line.endswith("; sharding=auto: the job decides on its GPUs") and plan.sharding == "auto"


def test_local_mode_on_a_cpu_says_so_and_never_refuses(monkeypatch, no_hub_cache):
    monkeypatch.setattr("ade_mlflow_plugin.backend.fit.local_gpus", lambda *_: None)  # this machine: no GPU
    plan = plan_fit(cloud(mode="local"), training(base_model=CODER_33B, batch_size=16))
    assert "unsharded; local mode on this machine's CPU: no GPU to check; sharding=auto -> none" in plan.line
    assert plan.sharding == "none" and plan.tags["ade.memory_fit"] == "not checked"
    unknown = plan_fit(cloud(mode="local"), training(base_model="someorg/mystery-coder-7b"))
    assert unknown.sharding == "none"


def test_local_mode_with_gpus_is_checked_against_them(no_hub_cache):
    plan = plan_fit(cloud(mode="local"),
                    training(base_model="deepseek-ai/deepseek-coder-6.7b-base", max_seq_len=512, checkpoint_layers=0),
                    local=Gpus(8, 22.0, "this machine's GPUs"))
    assert plan.sharding == "fsdp" and "over this machine's GPUs (22 GiB per GPU, 8 GPU(s))" in plan.line


def test_local_hosts_are_checked_against_the_gpus_each_host_gets(no_hub_cache):
    # local_hosts.host_devices gives each of 2 hosts 3 // 2 = 1 GPU: the job shards over 2, not 3 (at batch 8 no
    # count of recomputed layers fits one GPU)
    plan = plan_fit(cloud(mode="local", instance_count=2), training(base_model=CODER_6_7B, batch_size=8),
                    local=Gpus(3, 22.0, "this machine's GPUs"))
    assert "over this machine's GPUs, 1 for each of 2 hosts (22 GiB per GPU, 2 GPU(s))" in plan.line, plan.line
    one_host = plan_fit(cloud(mode="local"), training(base_model=CODER_6_7B), local=Gpus(3, 22.0, "this machine's GPUs"))
    assert "(22 GiB per GPU, 3 GPU(s))" in one_host.line


def test_more_local_hosts_than_gpus_are_refused_naming_the_fixes(no_hub_cache):
    # no share for any host: each host's rank 0 would load a whole copy on the one card (NCCL: duplicate GPU)
    with pytest.raises(ConfigError) as refused:
        plan_fit(cloud(mode="local", instance_count=2), training(), local=Gpus(1, 22.0, "this machine's GPUs"))
    message = refused.value.message
    assert "\n" not in message and refused.value.exit_code == 2
    assert message.startswith("instance_count 2 in local mode needs a GPU for each host, and only 1 of")
    assert message.endswith('use instance_count <= 1, or train the hosts on CPU with "environment": '
                            '{"CUDA_VISIBLE_DEVICES": ""} in the backend config')
    # an unknown model too: the hosts' GPUs are wrong whatever the model
    with pytest.raises(ConfigError, match="instance_count <= 1"):
        plan_fit(cloud(mode="local", instance_count=2), training(base_model="someorg/mystery-coder-7b"),
                 local=Gpus(1, 22.0, "this machine's GPUs"))


def test_a_local_refusal_offers_fixes_that_exist_in_local_mode(no_hub_cache):
    gpus = Gpus(1, 22.0, "this machine's GPUs")
    with pytest.raises(ConfigError) as after:  # the evals after training bind: one prompt of 16384 + 2048 tokens
        plan_fit(cloud(mode="local"), training(base_model=CODER_6_7B, max_new_tokens=16384), local=gpus)
    with pytest.raises(ConfigError) as training_binds:
        plan_fit(cloud(mode="local"), training(base_model=CODER_33B, checkpoint_layers=0), local=gpus)
    for refused in (after, training_binds):
        assert "instance type" not in refused.value.message
        assert "than this machine's (or mode=sagemaker on a bigger GPU instance)" in refused.value.message


def test_the_canonical_qlora_case_fits_the_cheapest_a10g_with_its_evals(no_hub_cache):
    # 6.7b QLoRA on one A10G, defaults: the job generates as many prompts at once as the free memory holds
    # (evaluation.completions), so the plan needs one prompt's KV cache, not 16 prompts' (16.5 GiB)
    plan = plan_fit(cloud(instance_type="ml.g5.xlarge"), training(base_model=CODER_6_7B, quantization="4bit"))
    assert "fits unsharded" in plan.line, plan.line


def test_the_after_eval_refusal_names_the_kv_cache_and_offers_eval_samples_0(no_hub_cache):
    # 6.7b QLoRA on one A10G generating 32768 new tokens: training fits, one prompt's KV cache after it does not
    config = cloud(instance_type="ml.g5.xlarge")
    long = {"base_model": CODER_6_7B, "quantization": "4bit", "max_new_tokens": 32768}
    assert "fits" in plan_fit(config, training(**long, eval_samples=0)).line
    with pytest.raises(ConfigError) as refused:
        plan_fit(config, training(**long))
    message = refused.value.message
    assert "(the model as it trained and exact_match's KV cache for one prompt of up to 34816 tokens)" in message
    assert message.endswith("use eval_samples=0 (no exact_match generation after training), a smaller "
                            "max_new_tokens (now 32768), an instance type with more memory per GPU"), message
    assert "fits" in plan_fit(config, training(**{**long, "max_new_tokens": 2048})).line  # the fix it offers


def test_an_instance_type_without_gpu_figures_is_not_checked(no_hub_cache):
    plan = plan_fit(cloud(instance_type="ml.m5.xlarge"), training())
    assert "ml.m5.xlarge is not a GPU instance type this plugin knows: not checked" in plan.line
    assert plan.sharding == "auto"


def test_adapters_count_fp32_on_gpus_without_bf16(no_hub_cache):
    bf16 = plan_fit(cloud(instance_type="ml.g5.12xlarge"), training(batch_size=1))
    fp32 = plan_fit(cloud(instance_type="ml.g4dn.12xlarge"), training(batch_size=1))
    assert "LoRA+optimizer 0.1" in bf16.line and "LoRA+optimizer 0.2" in fp32.line
    # and each LoRA path keeps autocast's 16-bit copy of its fp32-cast input: more activations too
    activations = [float(plan.line.split("activations ")[1].split()[0].rstrip(",")) for plan in (bf16, fp32)]
    assert activations[1] > activations[0], (bf16.line, fp32.line)


def test_checkpoint_layers_auto_recomputes_the_fewest_layers_that_make_it_fit(no_hub_cache):
    # the specification's snippet: the defaults (batch 4 x 2048) on one 16 GB T4
    plan = plan_fit(cloud(instance_type="ml.g4dn.xlarge"), training())
    layers = int(plan.checkpoint_layers)
    assert 0 < layers < 24 and plan.line.endswith(f"; sharding=auto -> none; checkpoint_layers=auto -> {layers} of 24")
    assert plan.options == {"sharding": "none", "checkpoint_layers": str(layers)}
    assert plan.tags["ade.checkpoint_layers"] == str(layers)
    assert float(plan.tags["ade.memory_estimate_gib"]) <= 14.6
    # one layer fewer would not fit; a count the user gave is kept, and refused when it cannot fit
    with pytest.raises(ConfigError, match="ml.g4dn.xlarge"):
        plan_fit(cloud(instance_type="ml.g4dn.xlarge"), training(checkpoint_layers=layers - 1))
    assert plan_fit(cloud(), training()).checkpoint_layers is None  # fits as it is: left to the job


def test_lora_dropout_counts_in_the_estimate_and_can_refuse(no_hub_cache):
    # 1.3b, batch 4 x 2048 on one A10G with no layer recomputed: ~20.8 GiB fits without dropout; the 0.05 the
    # README suggests for small datasets keeps a dropped-out input per LoRA path and would run out of memory
    config = cloud(instance_type="ml.g5.2xlarge")
    plain = plan_fit(config, training(checkpoint_layers=0))
    with pytest.raises(ConfigError, match="gradient_checkpointing=true"):
        plan_fit(config, training(checkpoint_layers=0, lora_dropout=0.05))
    # with checkpoint_layers=auto (the default) it fits with more layers recomputed than without dropout
    auto = plan_fit(config, training(lora_dropout=0.05))
    assert plain.checkpoint_layers is None and int(auto.checkpoint_layers) > 0
    assert float(auto.tags["ade.memory_estimate_gib"]) <= 22


def test_a_local_model_folder_is_named_by_its_folder_name(tmp_path):
    folder = model_folder(tmp_path / "models" / "tiny-coder", TINY)
    plan = plan_fit(cloud(), training(base_model=str(folder)))
    assert plan.line.startswith("Memory estimate: tiny-coder: ~") and "fits unsharded" in plan.line
    assert plan.tags["ade.memory_model_shape"] == f"config.json of {folder}"


def test_checkpoint_layers_auto_prefers_recomputing_to_sharding(no_hub_cache):
    # 4 T4s over PCIe: a 1.3B that fits one of them with 13 layers recomputed is not sharded
    plan = plan_fit(cloud(instance_type="ml.g4dn.12xlarge"), training())
    assert plan.sharding == "none" and plan.checkpoint_layers == "13"


def test_auto_prefers_recomputed_layers_to_fsdp_over_pcie_even_when_fsdp_fits_as_it_is(no_hub_cache):
    # 6.7b batch 1 on 4 A10G (PCIe): FSDP fits as it is, but 14 of 32 layers recomputed fit one GPU unsharded
    config, work = cloud(instance_type="ml.g5.12xlarge"), {"base_model": CODER_6_7B, "batch_size": 1, "eval_samples": 0}
    plan = plan_fit(config, training(**work))
    assert (plan.sharding, plan.checkpoint_layers) == ("none", "14"), plan.line
    assert plan.options == plan_fit(config, training(sharding="none", **work)).options
    assert plan_fit(config, training(checkpoint_layers=0, **work)).sharding == "fsdp"  # a count given: kept


def test_auto_keeps_fsdp_as_it_is_over_nvlink_but_not_between_hosts(no_hub_cache):
    # 13b batch 1 on one p4d (8 A100, NVSwitch): the all-gather is cheap, FSDP with nothing recomputed stands
    work = {"base_model": "codellama/codellama-13b-hf", "batch_size": 1, "eval_samples": 0}
    one = plan_fit(cloud(instance_type="ml.p4d.24xlarge"), training(**work))
    assert (one.sharding, one.checkpoint_layers) == ("fsdp", None), one.line
    # two p4d: FSDP would all-gather over the network; unsharded (DDP: only LoRA gradients cross) is cheaper
    two = plan_fit(cloud(instance_type="ml.p4d.24xlarge", instance_count=2), training(**work))
    assert two.sharding == "none" and int(two.checkpoint_layers) > 0, two.line


def test_a_registry_that_does_not_answer_is_skipped_without_its_credentials(monkeypatch, no_hub_cache):
    import socket

    import mlflow

    with socket.socket() as probe:  # a port nothing listens on: MLflow's error repeats the URL it called
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://alice:s3cret@127.0.0.1:{port}/?token=t0ken"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        plan = plan_fit(cloud(), training(base_model="models:/coder@champion"))
    finally:
        mlflow.set_tracking_uri(None)
    assert plan.line.startswith("Memory estimate: skipped: cannot read models:/coder@champion's config.json (")
    assert f"http://127.0.0.1:{port}/" in plan.line, plan.line
    assert not any(secret in plan.line for secret in ("alice", "s3cret", "t0ken")), plan.line


def test_the_docs_example_lines_are_what_the_code_prints(no_hub_cache):
    # docs/memory-estimate.md's two blocks: the approval and the refusal, with the settings its text names
    text = (Path(__file__).resolve().parents[2] / "docs" / "memory-estimate.md").read_text(encoding="utf-8")
    approved, refused = [block.strip() for block in text.split("```")[1::2]][:2]
    plan = plan_fit(cloud(instance_type="ml.p4d.24xlarge"), training(base_model=CODER_33B))
    assert approved.splitlines()[-1] == plan.line
    with pytest.raises(ConfigError) as refusal:
        plan_fit(cloud(instance_type="ml.g5.xlarge"), training(base_model=CODER_33B, batch_size=16))
    assert refused == f"ade-sagemaker: error: {refusal.value.message}"


def test_a_refusal_offers_only_fixes_that_fit_on_their_own(no_hub_cache):
    # 33b 4-bit at batch 1 on one A10G: every layer recomputed is still too much, so no gradient_checkpointing
    with pytest.raises(ConfigError) as refused:
        plan_fit(cloud(instance_type="ml.g5.xlarge"), training(base_model=CODER_33B, batch_size=1, quantization="4bit"))
    assert "gradient_checkpointing" not in refused.value.message and "max_seq_len" in refused.value.message
    # 6.7b bf16 at batch 2 with nothing recomputed: a 4-bit base fits, but not with exact_match's KV cache after
    # (one prompt of 2048 + 32768 tokens)
    with pytest.raises(ConfigError) as refused:
        plan_fit(cloud(instance_type="ml.g5.xlarge"),
                 training(base_model=CODER_6_7B, batch_size=2, checkpoint_layers=0, max_new_tokens=32768))
    assert "use quantization=4bit with eval_samples=0, a smaller batch_size" in refused.value.message


def test_a_broken_config_json_is_skipped_with_why(tmp_path):
    folder = model_folder(tmp_path / "broken", {**TINY, "num_attention_heads": 0})
    plan = plan_fit(cloud(), training(base_model=str(folder)))
    assert plan.line.startswith("Memory estimate: skipped: cannot read the config.json of")
    assert "num_attention_heads must be a whole number > 0, got 0" in plan.line
