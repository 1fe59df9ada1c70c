"""Prompt/completion examples -> token rows: loss on completion tokens only, examples packed per row.

A packed row holds several examples back to back with position ids restarting at 0 for each one and
NO attention mask: transformers then finds the example boundaries from the position ids and builds a
block-diagonal causal mask, so no example attends to another (only while use_cache is False; with a
cache it skips the detection). Padding is a segment of its own (positions restarting, labels -100).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

IGNORE = -100  # label id the loss skips


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


@dataclass
class PackStats:
    examples: int = 0
    dropped_too_long: int = 0
    truncated: int = 0
    rows: int = 0
    tokens: int = 0
    completion_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fill(self) -> float:
        """Share of row capacity holding real tokens (1.0 = no padding)."""
        capacity = self.extra.get("capacity", 0)
        return self.tokens / capacity if capacity else 0.0


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Prompt ids with BOS once: chat-templated prompts already start with the BOS text."""
    bos = tokenizer.bos_token
    has_bos = bool(bos) and prompt.startswith(bos)
    return tokenizer(prompt, add_special_tokens=not has_bos)["input_ids"]


def encode(tokenizer: Any, prompt: str, completion: str, max_len: int) -> Encoded | None:
    """One example: prompt (masked) + completion + EOS, cut to max_len; None when no completion token fits."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    if len(prompt_ids) + 1 > max_len or not completion_ids:
        return None
    ids = (prompt_ids + completion_ids)[:max_len]
    labels = [IGNORE] * len(prompt_ids) + completion_ids
    labels = labels[:max_len]
    # The first token of an example is never a target: in a packed row it would be "predicted" from
    # the previous example's last token.
    labels[0] = IGNORE
    return Encoded(ids, labels, len(prompt_ids) + len(completion_ids) > max_len)


def encode_all(tokenizer: Any, rows: Iterable[dict[str, str]], max_len: int, stats: PackStats) -> list[Encoded]:
    out = []
    for row in rows:
        stats.examples += 1
        enc = encode(tokenizer, row["prompt"], row["completion"], max_len)
        if enc is None:
            stats.dropped_too_long += 1
            continue
        stats.truncated += enc.truncated
        out.append(enc)
    return out


def pack(encoded: list[Encoded], max_len: int, packing: bool = True) -> list[dict[str, list[int]]]:
    """Greedy in-order packing into rows of at most max_len tokens (one example per row without packing)."""
    rows: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for enc in encoded:
        if current["input_ids"] and (not packing or len(current["input_ids"]) + len(enc.input_ids) > max_len):
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += enc.input_ids
        current["labels"] += enc.labels
        current["position_ids"] += list(range(len(enc.input_ids)))
    if current["input_ids"]:
        rows.append(current)
    return rows


def build_rows(tokenizer: Any, examples: Any, max_len: int, packing: bool = True) -> tuple[list[dict], PackStats]:
    """Examples (an iterable of dicts with prompt/completion) -> rows for the collator, and their stats."""
    stats = PackStats()
    encoded = encode_all(tokenizer, examples, max_len, stats)
    rows = pack(encoded, max_len, packing)
    stats.rows = len(rows)
    stats.tokens = sum(len(r["input_ids"]) for r in rows)
    stats.completion_tokens = sum(sum(1 for t in r["labels"] if t != IGNORE) for r in rows)
    stats.extra["capacity"] = len(rows) * max_len if packing else stats.tokens
    return rows, stats


class PackedCollator:
    """Pads a batch of rows to its longest row; the padding is its own segment so nothing attends to it."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 1) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of  # >1: few distinct shapes for compiled layers

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(row["input_ids"]) for row in batch)
        width = -(-width // self.multiple) * self.multiple
        ids, labels, positions = [], [], []
        for row in batch:
            pad = width - len(row["input_ids"])
            ids.append(list(row["input_ids"]) + [self.pad_token_id] * pad)
            labels.append(list(row["labels"]) + [IGNORE] * pad)
            positions.append(list(row["position_ids"]) + list(range(pad)))
        # No attention_mask on purpose: it would switch off transformers' packed-sequence detection.
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "position_ids": torch.tensor(positions)}
