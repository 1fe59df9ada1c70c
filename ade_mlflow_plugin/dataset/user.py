"""Your own data (issue 18 item 4): JSON Lines, Parquet or a saved Hugging Face dataset -> a PreparedDataset.

Rows need `prompt` and `completion` columns (loss on the completion only), or one text column (`text`, or
the only column there is: the whole text is the completion, with an empty prompt). `inspect`, which checks
that before anything is submitted, lives in the core (dataset_format.py: the backend runs it too) and is
re-exported here. `load_user_dataset` is the job side: the rows as the train/eval DatasetDict the
training entries take, with a content digest for the run's dataset input.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Iterator

# inspect and is_prepared are re-exported: the job's pipeline and the tests name them from here.
from ade_mlflow_plugin.dataset_format import EVAL_SPLITS, Source, inspect, is_prepared  # noqa: F401

DATASET_NAME = "user_dataset"
SOURCE = "user"


# ---------------------------------------------------------------- job side
def load_user_dataset(path: str | Path, *, eval_fraction: float, seed: int, name: str = "dataset") -> Any:
    """The rows of ``path`` as a PreparedDataset (train/eval, the prepared datasets' columns, digest, stats).

    A saved DatasetDict keeps its own held-out split (eval, validation or test); any other source holds out
    ``eval_fraction`` of its rows, drawn by ``seed``.
    """
    from ade_mlflow_plugin.dataset.build import PreparedDataset, compute_digest, to_dataset_dict

    source = inspect(path, name)
    train, held_out = _split(source, eval_fraction, seed)
    columns = {"train": _columns(train, source), "eval": _columns(held_out, source)}
    digest = compute_digest(columns)
    stats = {"source": str(source.path), "format": source.format, "columns": list(source.columns),
             "examples": {"total": len(train) + len(held_out), "train": len(train), "eval": len(held_out),
                          "dropped_empty": source.rows - len(train) - len(held_out)},
             "eval_from": "saved split" if _saved_eval(source) else f"eval_fraction {eval_fraction}",
             "digest": digest}
    return PreparedDataset(dataset=to_dataset_dict(columns), stats=stats, digest=digest, path=None)


def _saved_eval(source: Source) -> str | None:
    return next((s for s in EVAL_SPLITS if s in source.splits), None)


def _split(source: Source, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    held = _saved_eval(source)
    if held is not None:
        train_splits = [s for s in source.splits if s not in EVAL_SPLITS]
        return _examples(source, train_splits), _examples(source, [held])
    rows = _examples(source, list(source.splits))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    count = round(len(rows) * eval_fraction) if len(rows) > 1 else 0
    count = max(1, count) if eval_fraction > 0 and len(rows) > 1 else count
    held_out = set(order[:count])
    return ([r for i, r in enumerate(rows) if i not in held_out], [r for i, r in enumerate(rows) if i in held_out])


def _examples(source: Source, splits: list[str]) -> list[dict]:
    """Every row with a non-empty completion as {"prompt", "completion", "path"}."""
    text = source.text_column
    out = []
    for split in splits:
        for file in source.splits[split]:
            for record in _records(source.format, file):
                prompt = "" if text else _text(record.get("prompt"))
                completion = _text(record.get(text)) if text else _text(record.get("completion"))
                if completion.strip():
                    out.append({"prompt": prompt, "completion": completion, "path": file.name})
    return out


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _records(fmt: str, file: Path) -> Iterator[dict]:
    if fmt == "jsonl":
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)
        return
    if fmt == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(file).to_pylist()
        return
    from ade_mlflow_plugin.dataset.build import load_split

    yield from load_split(file)


def _columns(rows: list[dict], source: Source) -> dict[str, list[str]]:
    from ade_mlflow_plugin.dataset import examples

    values = {"prompt": [r["prompt"] for r in rows], "completion": [r["completion"] for r in rows],
              "source": [SOURCE] * len(rows), "task": [source.format] * len(rows),
              "path": [r["path"] for r in rows], "language": [""] * len(rows)}
    return {c: values[c] for c in examples.COLUMNS}


def mix(mined: Any, user: Any, ratio: float, seed: int) -> Any:
    """The mined examples plus enough of yours (drawn by seed) that they make ``ratio`` of the training
    split, as many as there are when yours fall short; both eval splits are kept whole."""
    from ade_mlflow_plugin.dataset import examples
    from ade_mlflow_plugin.dataset.build import PreparedDataset, compute_digest, to_dataset_dict

    mined_train, user_train = len(mined.dataset["train"]), len(user.dataset["train"])
    wanted = round(mined_train * ratio / (1 - ratio)) if ratio < 1 else user_train
    taken = sorted(random.Random(seed).sample(range(user_train), min(wanted, user_train)))
    columns = {"train": _concat(mined.dataset["train"], user.dataset["train"].select(taken)),
               "eval": _concat(mined.dataset["eval"], user.dataset["eval"])}
    digest = compute_digest({split: {c: columns[split][c] for c in examples.COLUMNS} for split in columns})
    share = len(taken) / max(1, mined_train + len(taken))
    line = (f"{mined_train} mined + {len(taken)} of yours in train ({share:.0%} yours; dataset_ratio {ratio:g}"
            + (f", only {user_train} available" if wanted > user_train else "") + ")")
    stats = {"mix": {"mined_train": mined_train, "user_train": len(taken), "user_available": user_train,
                     "dataset_ratio": ratio, "line": line},
             "mined": mined.stats, "user": user.stats, "digest": digest}
    return PreparedDataset(dataset=to_dataset_dict(columns), stats=stats, digest=digest, path=None)


def _concat(first: Any, second: Any) -> dict[str, list[str]]:
    from ade_mlflow_plugin.dataset import examples

    return {c: list(first[c]) + list(second[c]) for c in examples.COLUMNS}
