"""Prompt formats: the base model's chat template and FIM tokens when it has them, plain text otherwise."""
from __future__ import annotations

from typing import Any

#: Known FIM token sets (prefix, suffix/hole, middle/end), in preference order.
FIM_TOKEN_SETS: tuple[tuple[str, str, str], ...] = (
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),  # deepseek-coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
)
#: Used when the tokenizer has no FIM tokens: StarCoder-style strings.
DEFAULT_FIM = FIM_TOKEN_SETS[1]


def fim_tokens(tokenizer: Any) -> tuple[str, str, str]:
    """The tokenizer's FIM tokens when all three of a known set are single tokens of it."""
    if tokenizer is None:
        return DEFAULT_FIM
    vocab = tokenizer.get_vocab()
    for token_set in FIM_TOKEN_SETS:
        if all(token in vocab for token in token_set):
            return token_set
    return DEFAULT_FIM


class Formatter:
    """Renders instructions through the chat template (when there is one) and FIM prompts."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer
        self.chat = bool(tokenizer is not None and getattr(tokenizer, "chat_template", None))
        self.prefix, self.suffix, self.middle = fim_tokens(tokenizer)
        self._frame = self._find_frame() if self.chat else None

    def _render(self, content: str) -> str:
        messages = [{"role": "user", "content": content}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _find_frame(self) -> tuple[str, str] | None:
        """(before, after) when the template puts a user message in verbatim: rendering jinja per example
        costs more than the rest of example building, and a fixed frame gives the identical string.
        None (render each time) when probes show the template transforms the content."""
        probe = "\u2063frame-probe\u2063"
        rendered = self._render(probe)
        if rendered.count(probe) != 1:
            return None
        before, after = rendered.split(probe)
        for check in ("  x\n{{ y }}\n\n", "\n<|a|> 'b' \"c\" \\ z  "):
            if self._render(check) != before + check + after:
                return None
        return before, after

    def instruct(self, instruction: str, plain: str) -> str:
        """The chat prompt for an instruction (generation prompt appended), else the plain prompt."""
        if not self.chat:
            return plain
        if self._frame is not None:
            return self._frame[0] + instruction + self._frame[1]
        return self._render(instruction)

    def fim_psm(self, prefix: str, suffix: str) -> str:
        """Prefix-suffix-middle order: the model sees prefix then suffix, and writes the middle."""
        return f"{self.prefix}{prefix}{self.suffix}{suffix}{self.middle}"

    def fim_spm(self, prefix: str, suffix: str) -> str:
        """Suffix-prefix-middle order (Bavarian et al. 2022, as StarCoder trains it)."""
        return f"{self.prefix}{self.suffix}{suffix}{self.middle}{prefix}"
