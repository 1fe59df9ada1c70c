"""A tiny deepseek-coder-shaped model for tests and the demo: `ade-mlflow make-tiny-model DIR --codebase PATH`.

deepseek-coder-1.3b is a LlamaForCausalLM (hidden 2048, 24 layers, 16 heads, SiLU MLP of 5504, RMSNorm
1e-6, linear RoPE x4 at theta 100000, untied embeddings) with a byte-level BPE tokenizer, FIM tokens and
an instruction chat template. This builds the same layout scaled down, with random weights, and a
byte-level BPE trained on the codebase (secret lines left out), both written with save_pretrained so
everything downstream goes through the ordinary from_pretrained path offline.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import click


BOS = "<｜begin▁of▁sentence｜>"
EOS = "<|EOT|>"
PAD = "<｜end▁of▁sentence｜>"
FIM = ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>")
SPECIAL_TOKENS = [BOS, EOS, PAD, *FIM]
# deepseek-coder-instruct's prompt layout, shortened (no system preamble).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}### Instruction:\n{{ message['content'] }}\n"
    "{% else %}### Response:\n{{ message['content'] }}\n<|EOT|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
MAX_CORPUS_BYTES = 20_000_000  # a BPE of a few thousand merges needs far less than this


def corpus(codebase: Path) -> Iterator[str]:
    """Text of the codebase's source files (the dataset walker's choice), lines holding secrets dropped."""
    from ade_mlflow_plugin.secret_scan import drop_secret_lines
    from ade_mlflow_plugin.dataset.walk import walk_codebase

    budget = MAX_CORPUS_BYTES
    for source in walk_codebase(codebase).files:
        if budget <= 0:
            return
        try:
            content = Path(source.abs).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        kept = drop_secret_lines(content, source.rel)  # the dataset's own line split, so rows line up
        budget -= len(kept)
        yield kept


def train_tokenizer(codebase: Path, vocab_size: int):
    """A byte-level BPE (deepseek-coder's kind) trained on the codebase, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ade_mlflow_plugin.errors import ConfigError  # here: errors.py imports mlflow (keeps --help fast)

    texts = list(corpus(codebase))
    if not any(t.strip() for t in texts):
        raise ConfigError(f"codebase '{codebase}' has no source files to train a tokenizer on: "
                          "point --codebase at a code repository")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    bos_id = bpe.token_to_id(BOS)
    bpe.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        additional_special_tokens=list(FIM), model_max_length=16384,
                                        clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(tokenizer, hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=round(hidden * 5504 / 2048),
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        hidden_act="silu", max_position_embeddings=16384, rms_norm_eps=1e-6, initializer_range=0.02,
        rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, use_cache=True,
    )


def make_tiny_model(out_dir: str | Path, codebase: str | Path, *, vocab_size: int = 1024, hidden: int = 64,
                    layers: int = 2, heads: int = 4, seed: int = 0) -> Path:
    """Write a random-weight tiny LlamaForCausalLM and its tokenizer to out_dir; returns out_dir."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from ade_mlflow_plugin.errors import ConfigError  # here: errors.py imports mlflow (keeps --help fast)

    out, source = Path(out_dir).expanduser(), Path(codebase).expanduser()
    if not source.is_dir():
        raise ConfigError(f"--codebase '{codebase}' is not a directory: pass the code folder to train the tokenizer on")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"'{out_dir}' exists and is not an empty folder: pass a new folder for the model")
    if hidden % heads:
        raise ConfigError(f"--hidden {hidden} is not a multiple of --heads {heads}: pick e.g. 64 and 4")
    tokenizer = train_tokenizer(source, vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(tokenizer, hidden, layers, heads))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "ade_tiny.json").write_text(json.dumps({"codebase": str(source.resolve()), "seed": seed,
                                                   "parameters": sum(p.numel() for p in model.parameters())}))
    return out


@click.command("make-tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--codebase", required=True, type=click.Path(), help="Code folder to train the tokenizer on.")
@click.option("--vocab-size", default=1024, show_default=True, type=click.IntRange(300, 65536))
@click.option("--hidden", default=64, show_default=True, type=click.IntRange(8, 4096))
@click.option("--layers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--heads", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option("--seed", default=0, show_default=True, type=int)
def make_tiny_model_command(out_dir: str, codebase: str, vocab_size: int, hidden: int, layers: int, heads: int,
                            seed: int) -> None:
    """Build a tiny deepseek-coder-shaped model (random weights) with a tokenizer trained on CODEBASE."""
    path = make_tiny_model(out_dir, codebase, vocab_size=vocab_size, hidden=hidden, layers=layers, heads=heads,
                           seed=seed)
    click.echo(str(path))
