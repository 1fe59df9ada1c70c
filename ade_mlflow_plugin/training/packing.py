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


class _OpenRows:
    """Open rows bucketed by free space; finds the fullest row an example still fits in, in O(log max_len).

    A binary tree over free-space values 0..max_len counts the open rows per value, so "the smallest free
    space >= n" is one walk up and one walk down instead of a scan over every open row.
    """

    def __init__(self, max_len: int) -> None:
        self.leaves = 1 << max_len.bit_length()  # > max_len
        self.count = [0] * (2 * self.leaves)
        self.rows: dict[int, list[int]] = {}

    def add(self, free: int, row: int) -> None:
        self.rows.setdefault(free, []).append(row)
        self._change(free, 1)

    def take_best_fit(self, need: int) -> tuple[int, int] | None:
        """Remove and return (free, row) of the open row with the least free space >= need, if any."""
        free = self._first_at_least(need)
        if free is None:
            return None
        self._change(free, -1)
        return free, self.rows[free].pop()

    def _change(self, free: int, delta: int) -> None:
        node = free + self.leaves
        while node:
            self.count[node] += delta
            node //= 2

    def _first_at_least(self, need: int) -> int | None:
        node = need + self.leaves
        if self.count[node]:
            return need
        while True:  # up until a right sibling holds a row
            if node % 2 == 0 and self.count[node + 1]:
                node += 1
                break
            node //= 2
            if node <= 1:
                return None
        while node < self.leaves:  # down to its leftmost non-empty leaf
            node = 2 * node if self.count[2 * node] else 2 * node + 1
        return node - self.leaves


def best_fit_decreasing(lengths: list[int], max_len: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the open row it fills the most (or a new row).

    Rows come out ~97% full for lengths spread over 10-100% of max_len, against ~75% for in-order packing;
    every padded position is a token the GPU computes for nothing. Deterministic: ties keep input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    open_rows = _OpenRows(max_len)
    for index in order:
        length = lengths[index]
        found = open_rows.take_best_fit(length)
        if found is None:
            found = (max_len, len(rows))
            rows.append([])
        free, row = found
        rows[row].append(index)
        if free - length > 0:
            open_rows.add(free - length, row)
    return rows


def pack(encoded: list[Encoded], max_len: int, packing: bool = True) -> list[dict[str, list[int]]]:
    """Rows of at most max_len tokens, packed best-fit-decreasing (one example per row without packing)."""
    if not packing:
        groups = [[i] for i in range(len(encoded))]
    else:
        groups = best_fit_decreasing([len(e.input_ids) for e in encoded], max_len)
    rows = []
    for group in groups:
        row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
        for index in group:
            enc = encoded[index]
            row["input_ids"] += enc.input_ids
            row["labels"] += enc.labels
            row["position_ids"] += list(range(len(enc.input_ids)))
        rows.append(row)
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
