"""Held-out metrics: eval_loss and perplexity over the eval rows, exact match of greedy completions."""
from __future__ import annotations

import math
from typing import Any

from ade_mlflow_plugin.training.packing import IGNORE, PackedCollator, encode_prompt

MAX_LOG_PERPLEXITY = 50.0  # exp() of a random model's loss overflows nothing, but keep the metric finite


def eval_loss(model: Any, rows: list[dict], pad_token_id: int, batch_size: int = 8) -> float | None:
    """Mean loss per completion token over the eval rows (None when there are none)."""
    import torch

    if not rows:
        return None
    collate = PackedCollator(pad_token_id)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
            shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                       shift_labels.reshape(-1), ignore_index=IGNORE,
                                                       reduction="sum")
            total += losses.item()
            count += int((shift_labels != IGNORE).sum())
    model.train(was_training)
    return total / count if count else None


def normalise(text: str) -> str:
    """Exact match ignores trailing whitespace and line-ending differences only."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))


def exact_match(model: Any, tokenizer: Any, examples: list[dict[str, str]], max_new_tokens: int) -> float | None:
    """Share of examples whose greedy completion equals the reference completion."""
    import torch

    if not examples:
        return None
    device = next(model.parameters()).device
    was_training, old_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True  # generation, not training: the KV cache is safe and fast here
    hits = 0
    try:
        with torch.no_grad():
            for example in examples:
                ids = torch.tensor([encode_prompt(tokenizer, example["prompt"])], device=device)
                reference = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=min(max_new_tokens, len(reference) + 1),
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
                hits += normalise(text) == normalise(example["completion"])
    finally:
        model.config.use_cache = old_cache
        model.train(was_training)
    return hits / len(examples)


def eval_metrics(model: Any, tokenizer: Any, rows: list[dict], samples: list[dict[str, str]],
                 max_new_tokens: int) -> dict[str, float]:
    """eval_loss, perplexity and exact_match (those that can be computed)."""
    metrics: dict[str, float] = {}
    loss = eval_loss(model, rows, tokenizer.pad_token_id)
    if loss is not None:
        metrics["eval_loss"] = loss
        metrics["perplexity"] = math.exp(min(loss, MAX_LOG_PERPLEXITY))
    if samples and max_new_tokens > 0:
        match = exact_match(model, tokenizer, samples, max_new_tokens)
        if match is not None:
            metrics["exact_match"] = match
    return metrics
