"""Held-out metrics: eval_loss and perplexity over the eval rows, exact match of greedy completions."""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from ade_mlflow_plugin import memory_estimate
from ade_mlflow_plugin.training.packing import IGNORE, PackedCollator, encode_prompt

logger = logging.getLogger(__name__)

MAX_LOG_PERPLEXITY = 50.0  # exp() of a random model's loss overflows nothing, but keep the metric finite


#: The fallback path (a head the chunked loss cannot take) keeps each batch's float logits under this.
LOGITS_BYTES = 1 << 30
#: Bytes per logit in the fallback path, all live at once: 16-bit logits, their float32 copy, the log-softmax.
BYTES_PER_LOGIT = 10


def eval_loss(model: Any, rows: list[dict], pad_token_id: int, batch_size: int = 8) -> float | None:
    """Mean loss per completion token over the eval rows (None when there are none).

    The logits are never whole: the LM head and cross-entropy run in chunks over the target tokens
    (speed.linear_cross_entropy, training's fused loss, exact), one chunk of float32 logits (512 MB) at a
    time. Whole logits were batch x seq x vocab x 10 bytes: 23 GiB for 8 rows of 2048 with a 152k vocabulary
    (Qwen2.5-Coder), more than training's peak. A head it cannot take (a bias, soft-capping) gets the
    model's logits in batches of at most LOGITS_BYTES.
    """
    import torch

    from ade_mlflow_plugin.training.speed import causal_lm, linear_cross_entropy

    if not rows:
        return None
    collate = PackedCollator(pad_token_id)
    device = next(model.parameters()).device
    lm = causal_lm(model)
    head = _plain_head(lm)
    if head is None:
        width = max(len(r["input_ids"]) for r in rows)
        batch_size = max(1, min(batch_size, LOGITS_BYTES // (width * lm.config.vocab_size * BYTES_PER_LOGIT)))
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
            labels = batch["labels"]
            if head is not None:
                hidden = lm.model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                  use_cache=False).last_hidden_state
                total += linear_cross_entropy(hidden, head.weight, labels, num_items_in_batch=1).item()  # a sum
            else:
                total += _logits_loss_sum(model, batch)
            count += int((labels[:, 1:] != IGNORE).sum())
    model.train(was_training)
    return total / count if count else None


def _plain_head(lm: Any) -> Any:
    """The LM head when logits are just hidden @ head.weight.T (what the chunked loss computes), else None."""
    import torch

    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    plain = type(head) is torch.nn.Linear and head.bias is None and hasattr(lm, "model")
    scaled = any(getattr(lm.config, key, None) not in (None, 1.0) for key in ("final_logit_softcapping", "logit_scale"))
    return head if plain and not scaled else None


def _logits_loss_sum(model: Any, batch: dict) -> float:
    import torch

    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                             shift_labels.reshape(-1), ignore_index=IGNORE, reduction="sum").item()


def normalise(text: str) -> str:
    """Exact match ignores trailing whitespace and line-ending differences only."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))


#: Prompts generated from together, at most. One at a time, 32 samples x 64 tokens were 2048 sequential decode
#: steps of a model that is idle at batch 1: the before/after evals took more of a short job than its training.
#: In batches of 16 (sorted by length, so little padding) the same evals are 128 decode steps. The KV cache of
#: 16 prompts of 2048 tokens is ~6 GB on the 1.3b model but ~17 GB on the 6.7b: on a GPU each batch takes only
#: as many prompts as the free memory holds (memory_estimate.generate_batch, which the fit check counts too).
GENERATE_BATCH = memory_estimate.GENERATE_BATCH
#: The before/after evals run under sdpa whatever the model trains with. Flex attention (training's) is
#: compiled per shape, and each decode step is a new key length: on an H100 the "before" eval of a
#: 1000-example job took 80 s, ten times its training. sdpa is exact for both: a generated prompt is one
#: sequence with a padding mask, and for packed eval rows transformers builds the block-causal mask from
#: the position ids (tests/training/test_evaluation.py checks packed == one example per row).
EVAL_ATTENTION = "sdpa"


def exact_match(model: Any, tokenizer: Any, examples: list[dict[str, str]], max_new_tokens: int) -> float | None:
    """Share of examples whose greedy completion equals the reference completion."""
    if not examples:
        return None
    texts = completions(model, tokenizer, examples, max_new_tokens)
    hits = sum(normalise(text) == normalise(e["completion"]) for text, e in zip(texts, examples))
    return hits / len(examples)


def completions(model: Any, tokenizer: Any, examples: list[dict[str, str]], max_new_tokens: int,
                batch_size: int = GENERATE_BATCH, attention: str | None = EVAL_ATTENTION) -> list[str]:
    """Greedy completion of each example's prompt, at most min(max_new_tokens, reference tokens + 1) tokens
    (one more than the reference: a match must also stop there).

    Prompts of similar length go together, left-padded with an attention mask (generate derives the
    positions from it, so a padded prompt sees the positions it would alone); each row is cut to its own
    limit, and the pads after an early EOS are special tokens that decode drops. ``attention``: the
    implementation generation runs under (None: the model's own). On a GPU a batch holds at most as many
    prompts as the free memory does (one at least).
    """
    import torch

    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, e["prompt"]) for e in examples]
    limits = [min(max_new_tokens, len(tokenizer(e["completion"], add_special_tokens=False)["input_ids"]) + 1)
              for e in examples]
    order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
    texts = [""] * len(examples)
    was_training, old_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True  # generation, not training: the KV cache is safe and fast here
    try:
        fits = _prompts_that_fit(model, device)
        with torch.no_grad(), attention_as(model, attention):
            for chunk in generate_chunks(order, [len(p) for p in prompts], limits, batch_size, fits):
                ids, mask = _left_padded([prompts[i] for i in chunk], tokenizer.pad_token_id, device)
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=max(limits[i] for i in chunk),
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                width = ids.shape[1]
                for row, i in enumerate(chunk):
                    texts[i] = tokenizer.decode(out[row, width:width + limits[i]], skip_special_tokens=True)
    finally:
        model.config.use_cache = old_cache
        model.train(was_training)
    return texts


def generate_chunks(order: list[int], prompt_lens: list[int], limits: list[int], most: int,
                    fits: Callable[[int], int] | None = None) -> Iterator[list[int]]:
    """``order``'s indices in consecutive chunks of at most ``most``. ``fits(tokens)``, when given, caps a chunk
    at how many rows of ``tokens`` tokens fit the memory free now: a chunk's rows are padded to its longest
    prompt and generate up to its largest limit."""
    start = 0
    while start < len(order):
        size = min(most, len(order) - start)
        while fits is not None and size > 1 and fits(_chunk_tokens(order[start:start + size], prompt_lens,
                                                                     limits)) < size:
            size -= 1
        yield order[start:start + size]
        start += size


def _chunk_tokens(chunk: list[int], prompt_lens: list[int], limits: list[int]) -> int:
    return max(prompt_lens[i] for i in chunk) + max(limits[i] for i in chunk)


def _prompts_that_fit(model: Any, device: Any) -> Callable[[int], int] | None:
    """On a GPU: tokens -> how many prompts of that length the free memory holds (memory_estimate's count for
    this model's shape); None elsewhere, or for a model whose config is not a Llama-style decoder's."""
    import torch

    if device.type != "cuda":
        return None
    try:
        shape = memory_estimate.ModelShape.from_config(model.config.to_dict())
    except (KeyError, ValueError, AttributeError):
        return None

    def fits(tokens: int) -> int:
        free, _total = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # the allocator's spare
        return memory_estimate.generate_batch(shape, tokens, free)

    return fits


@contextmanager
def attention_as(model: Any, implementation: str | None) -> Iterator[None]:
    """Run the block with the model's attention switched to ``implementation`` (then back)."""
    from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation
    from ade_mlflow_plugin.training.speed import causal_lm

    lm = causal_lm(model)
    current = attn_implementation(lm.config)
    if implementation is None or current is None or current == implementation:
        yield
        return
    try:
        lm.set_attn_implementation(implementation)
    except (ValueError, ImportError) as exc:  # an architecture without it: eval under its own, slower
        from ade_mlflow_plugin.errors import first_line

        logger.info("eval keeps %s attention (%s unavailable: %s)", current, implementation, first_line(exc, 200))
        yield
        return
    try:
        yield
    finally:
        lm.set_attn_implementation(current)


def _left_padded(prompts: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    import torch

    width = max(len(p) for p in prompts)
    ids = [[pad_id] * (width - len(p)) + p for p in prompts]
    mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def eval_metrics(model: Any, tokenizer: Any, rows: list[dict], samples: list[dict[str, str]],
                 max_new_tokens: int) -> dict[str, float]:
    """eval_loss, perplexity and exact_match (those that can be computed), under EVAL_ATTENTION."""
    metrics: dict[str, float] = {}
    with attention_as(model, EVAL_ATTENTION):
        loss = eval_loss(model, rows, tokenizer.pad_token_id)
        if loss is not None:
            metrics["eval_loss"] = loss
            metrics["perplexity"] = math.exp(min(loss, MAX_LOG_PERPLEXITY))
        if samples and max_new_tokens > 0:
            match = exact_match(model, tokenizer, samples, max_new_tokens)
            if match is not None:
                metrics["exact_match"] = match
    return metrics
