"""Training examples from units and chunks: mined pairs and programmatic (synthetic) transformations.

Candidates are cheap references (task, file index, item index); only the selected ones are rendered,
so a large codebase never holds every possible example in memory.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ade_mlflow_plugin.dataset.mine import MinedFile
from ade_mlflow_plugin.dataset.prompts import Formatter
from ade_mlflow_plugin.dataset.units import CodeUnit

MINED_TASKS = ("body_from_signature", "next_chunk")
SYNTHETIC_TASKS = ("fim_psm", "fim_spm", "docstring_from_code", "code_from_docstring")
SOURCE = {**{t: "mined" for t in MINED_TASKS}, **{t: "synthetic" for t in SYNTHETIC_TASKS}}
COLUMNS = ("prompt", "completion", "source", "task", "path", "language")
_MIN_DOC_CHARS = 12
_MIN_FIM_LINES = 3
_FENCE = {"cpp": "cpp", "c": "c", "python": "python", "javascript": "javascript", "typescript": "typescript",
          "go": "go", "java": "java", "rust": "rust"}
_LINE_COMMENT = {"python": "#"}

Candidate = tuple[str, int, int]  # (task, file index, unit or chunk index)


@dataclass(slots=True)
class Example:
    prompt: str
    completion: str
    source: str
    task: str
    path: str
    language: str


def unit_tasks(unit: CodeUnit) -> list[str]:
    """Tasks a unit can serve."""
    tasks = []
    if unit.split_row >= 0:
        tasks.append("body_from_signature")
    if unit.line_count >= _MIN_FIM_LINES:
        tasks += ["fim_psm", "fim_spm"]
    if len(unit.docstring) >= _MIN_DOC_CHARS:
        tasks += ["docstring_from_code", "code_from_docstring"]
    return tasks


def candidates(files: list[MinedFile], kept: list[list[bool]]) -> tuple[list[Candidate], list[Candidate]]:
    """(mined, synthetic) candidate lists in deterministic file order."""
    mined: list[Candidate] = []
    synthetic: list[Candidate] = []
    for fi, mf in enumerate(files):
        for ui, unit in enumerate(mf.units):
            if kept[fi][ui]:
                for task in unit_tasks(unit):
                    (mined if SOURCE[task] == "mined" else synthetic).append((task, fi, ui))
        mined.extend(("next_chunk", fi, ci) for ci in range(len(mf.chunks)))
    return mined, synthetic


class Renderer:
    """Turns candidates into Examples with one formatter and seed."""

    def __init__(self, files: list[MinedFile], formatter: Formatter, seed: int) -> None:
        self.files, self.fmt, self.seed = files, formatter, seed

    def render(self, candidate: Candidate) -> Example:
        task, fi, idx = candidate
        mf = self.files[fi]
        if task == "next_chunk":
            prompt, completion = self._next_chunk(mf, idx)
        else:
            unit = mf.units[idx]
            prompt, completion = getattr(self, "_" + task)(unit)
        return Example(prompt, completion, SOURCE[task], task, mf.path, mf.language)

    def _fence(self, language: str, code: str) -> str:
        return f"```{_FENCE.get(language, '')}\n{code.rstrip()}\n```"

    def _next_chunk(self, mf: MinedFile, idx: int) -> tuple[str, str]:
        chunk = mf.chunks[idx]
        instruction = (f"Continue this {mf.language} code from `{mf.path}` (the next lines only):\n\n"
                       + self._fence(mf.language, chunk.context))
        return self.fmt.instruct(instruction, chunk.context), chunk.text

    def _body_from_signature(self, unit: CodeUnit) -> tuple[str, str]:
        instruction = (f"Complete the body of this {unit.language} {unit.kind} from `{unit.path}`. "
                       f"Answer with the code that follows, nothing else.\n\n" + self._fence(unit.language, unit.header))
        return self.fmt.instruct(instruction, unit.header), unit.body

    def _docstring_from_code(self, unit: CodeUnit) -> tuple[str, str]:
        comment = _LINE_COMMENT.get(unit.language, "//")
        instruction = (f"Write the documentation for this {unit.language} {unit.kind}. Answer with the text "
                       f"only.\n\n" + self._fence(unit.language, unit.code_nodoc))
        plain = f"{unit.code_nodoc}\n{comment} Documentation of `{unit.name}`:\n"
        return self.fmt.instruct(instruction, plain), unit.docstring + "\n"

    def _code_from_docstring(self, unit: CodeUnit) -> tuple[str, str]:
        comment = _LINE_COMMENT.get(unit.language, "//")
        instruction = (f"Write a {unit.language} {unit.kind} named `{unit.name}` that matches this "
                       f"documentation. Answer with the code only.\n\n{unit.docstring}")
        plain = "".join(f"{comment} {line}".rstrip() + "\n" for line in unit.docstring.splitlines())
        return self.fmt.instruct(instruction, plain), unit.code_nodoc

    def _fim_split(self, unit: CodeUnit, task: str) -> tuple[str, str, str]:
        """(prefix, middle, suffix) at whole lines, chosen by a per-unit seeded RNG."""
        rng = random.Random(f"{self.seed}:{unit.path}:{unit.start_line}:{task}")
        lines = unit.code.splitlines(keepends=True)
        start = rng.randrange(1, len(lines))
        end = min(len(lines), start + rng.randint(1, max(1, len(lines) // 3)))
        return "".join(lines[:start]), "".join(lines[start:end]), "".join(lines[end:])

    def _fim_psm(self, unit: CodeUnit) -> tuple[str, str]:
        prefix, middle, suffix = self._fim_split(unit, "fim_psm")
        return self.fmt.fim_psm(prefix, suffix), middle

    def _fim_spm(self, unit: CodeUnit) -> tuple[str, str]:
        prefix, middle, suffix = self._fim_split(unit, "fim_spm")
        return self.fmt.fim_spm(prefix, suffix), middle
