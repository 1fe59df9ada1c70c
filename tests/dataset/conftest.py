"""Fixtures of the dataset tests: a copy of the polyglot fixture codebase and tiny trained tokenizers."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CODEBASES = Path(__file__).resolve().parents[1] / "fixtures" / "codebases"
DEEPSEEK_FIM = ["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Every planted credential of the fixture (src/app/settings.py, src/app/tls.py): none may reach an example.
PLANTED_SECRETS = [
    "AKIAQ3EGRTZ7VXMPLWQK",
    "k3Rj9vQ2mXw8Lp5TzN4bYc7HdF1gS6aU0eWiOqPl",
    "Zq8vR2mLw4tY",
    "Tr0ub4dor-horse-Battery9",
    "ghp_4fJ8kL2mN6pQ9rS3tU7vW1xY5zA0bC8dE2fG",
    "xoxb-2048150473-1024718239461-Kx9QwErTyUiOpAsDfGhJkLzX",
    "BEGIN RSA PRIVATE KEY",
    "MIIEowIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2kZtGnZ5KpPlKqbwxpOMr1qQ8Lpx",
    "Vh9Qw3dSYhR5pN8ZtUvJmXcKwLp2Rr9BqT4FkVhZ7YxN3sWcJdEuQaMbPoL1gHtI",
    "K7zRfWp0yXcV2bNnMq8LjTs4HdGkUe6ZaFiOr9BlPwXyCvQ1mSt3JhEg5DkNuWxo",
]
# Markers of files that must be skipped (ignored, vendored, generated, minified, binary).
SKIPPED_MARKERS = [
    "ignored_marker_function", "nested_ignored_marker_function", "build_dir_marker_function",
    "vendored_marker_function", "nodeModulesMarkerFunction", "generated_name_marker_function",
    "generated_header_marker_function", "minifiedMarker", "binary_marker_function",
]
LANGUAGES = {"python", "javascript", "typescript", "go", "java", "rust", "c", "cpp"}


@pytest.fixture
def codebase(tmp_path: Path) -> Path:
    """The polyglot fixture plus the files its .gitignore files ignore (git cannot keep those in place)."""
    root = tmp_path / "polyglot"
    shutil.copytree(CODEBASES / "polyglot", root)
    shutil.copytree(CODEBASES / "ignored_extras", root, dirs_exist_ok=True)
    (root / "README.md").unlink()
    (root / "_build").rename(root / "build")
    return root


def _train_tokenizer(fim: bool, chat: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p.read_text(errors="replace") for p in sorted((CODEBASES / "polyglot").rglob("*.*"))
             if p.suffix in {".py", ".js", ".ts", ".go", ".java", ".rs", ".c", ".cpp"} and p.stat().st_size < 5000]
    special = ["<s>", "</s>", "<pad>"] + (DEEPSEEK_FIM if fim else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=DEEPSEEK_FIM if fim else None)
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def chat_tokenizer():
    """A byte-level BPE trained on the fixture, with deepseek's FIM tokens and a chat template."""
    return _train_tokenizer(fim=True, chat=True)


@pytest.fixture(scope="session")
def plain_tokenizer():
    """A byte-level BPE trained on the fixture, without FIM tokens or chat template."""
    return _train_tokenizer(fim=False, chat=False)


def all_text(prepared) -> str:
    """Every prompt and completion of every split, joined."""
    parts = []
    for split in ("train", "eval"):
        parts += list(prepared.dataset[split]["prompt"]) + list(prepared.dataset[split]["completion"])
    return "\n".join(parts)
