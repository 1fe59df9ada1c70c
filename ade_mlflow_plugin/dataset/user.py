"""Your own data (issue 18 item 4): JSON Lines, Parquet or a saved Hugging Face dataset -> a PreparedDataset.

Rows need `prompt` and `completion` columns (loss on the completion only), or one text column (`text`, or
the only column there is: the whole text is the completion, with an empty prompt). `inspect` reads only
what it needs to check that (schemas, first lines, row counts; pyarrow and json, no `datasets`): the
backend runs it on a local `-P dataset=` before anything is submitted, so a wrong file is one line there,
not a failed job. `load_user_dataset` is the job side: the rows as the train/eval DatasetDict the
training entries take, with a content digest for the run's dataset input.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ade_mlflow_plugin.errors import ConfigError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
FOLDER_SUFFIXES = (".jsonl", ".ndjson", *PARQUET_SUFFIXES)
EVAL_SPLITS = ("eval", "validation", "test")  # a saved DatasetDict's held-out split, first found wins
DATASET_NAME = "user_dataset"
SOURCE = "user"
_HEAD_LINES = 1000  # JSON Lines: keys are read from this many rows; a 10 GB file is not parsed twice


@dataclass(frozen=True)
class Source:
    """What a dataset path holds: its format, its files per split, its columns and row count."""

    path: Path
    format: str  # "jsonl", "parquet" or "hf"
    splits: dict[str, list[Path]]  # split -> files ("all" when the data is not split)
    columns: tuple[str, ...]
    rows: int

    @property
    def text_column(self) -> str | None:
        """The column that is the whole example, when there are no prompt/completion columns."""
        if {"prompt", "completion"} <= set(self.columns):
            return None
        return "text" if "text" in self.columns else self.columns[0]


def is_prepared(path: str | Path) -> bool:
    """Whether path is a folder `prepare-data` wrote (its own stats and digest come with it)."""
    path = Path(path)
    return (path / "dataset_dict.json").is_file() and (path / "stats.json").is_file()


def inspect(path: str | Path, name: str = "dataset") -> Source:
    """Find the format, check the columns and that there are rows: ConfigError, one line, naming ``name``
    (the parameter), the path and the fix."""
    path = Path(path).expanduser()
    fmt, splits = _locate(path, name)
    columns, rows = _schema_and_rows(fmt, splits)
    if rows == 0:  # first: an empty JSON Lines file has no columns to judge either
        raise ConfigError(f"parameter '{name}': '{path}' holds no rows: pass a file with at least one example")
    _check_columns(name, path, columns)
    return Source(path, fmt, splits, tuple(columns), rows)


def _locate(path: Path, name: str) -> tuple[str, dict[str, list[Path]]]:
    if path.is_file():
        return _format_of(path, name), {"all": [path]}
    if not path.is_dir():
        raise ConfigError(f"parameter '{name}': '{path}' does not exist: pass a JSON Lines or Parquet file, or "
                          "a folder saved with datasets' save_to_disk")
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text()).get("splits") or []
        return "hf", {split: [path / split] for split in names}
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "hf", {"all": [path]}
    nested = sorted(path.rglob("dataset_dict.json"))
    if len(nested) == 1:  # a models:/ download or an s3:// prefix holding one saved dataset deeper down
        return _locate(nested[0].parent, name)
    return _folder_of_files(path, name)


def _format_of(file: Path, name: str) -> str:
    suffix = file.suffix.lower()
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise ConfigError(f"parameter '{name}': '{file}' is not a dataset file (.jsonl or .parquet expected): "
                      "save your examples as JSON Lines or Parquet")


def _folder_of_files(path: Path, name: str) -> tuple[str, dict[str, list[Path]]]:
    """A folder of data files (an s3:// prefix or a models:/ download lands as one): one format. Plain .json
    files are left out here (a model download holds config.json and the like); files named train and
    eval (or validation, test) are those splits."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    formats = {_format_of(f, name) for f in files}
    if len(formats) != 1:
        what = "no .jsonl or .parquet file" if not formats else "both JSON Lines and Parquet files"
        raise ConfigError(f"parameter '{name}': folder '{path}' holds {what}: pass one file, a folder of one "
                          "format, or a folder saved with datasets' save_to_disk")
    stems = {f.stem.lower(): f for f in files}
    if len(stems) == len(files) and "train" in stems and set(stems) <= {"train", *EVAL_SPLITS}:
        return formats.pop(), {stem: [file] for stem, file in stems.items()}
    return formats.pop(), {"all": files}


def _schema_and_rows(fmt: str, splits: dict[str, list[Path]]) -> tuple[list[str], int]:
    """Columns of the first file with rows (of the first file when none has any), rows of all files."""
    reader = {"jsonl": _jsonl_schema, "parquet": _parquet_schema, "hf": _hf_schema}[fmt]
    columns: list[str] | None = None
    rows = 0
    for file in (f for files in splits.values() for f in files):
        found, count = reader(file)
        if columns is None or (rows == 0 and count):
            columns = found
        rows += count
    return columns or [], rows


def _jsonl_schema(file: Path) -> tuple[list[str], int]:
    keys: dict[str, None] = {}
    rows = 0
    with file.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            rows += 1
            if rows > _HEAD_LINES:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ConfigError(f"dataset file '{file}' line {number} is not JSON: write one JSON object per "
                                  "line (JSON Lines)") from None
            if not isinstance(record, dict):
                raise ConfigError(f"dataset file '{file}' line {number} is not a JSON object: write one "
                                  "{\"prompt\": ..., \"completion\": ...} object per line") from None
            keys.update(dict.fromkeys(record))
    return list(keys), rows


def _parquet_schema(file: Path) -> tuple[list[str], int]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(file).metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid/OSError kinds for a bad file
        from ade_mlflow_plugin.errors import first_line

        raise ConfigError(f"dataset file '{file}' is not a readable Parquet file ({first_line(exc, 160)}): "
                          "write it with pandas' to_parquet or pyarrow") from None
    return list(meta.schema.to_arrow_schema().names), meta.num_rows


def _hf_schema(folder: Path) -> tuple[list[str], int]:
    """A split saved by save_to_disk: features from dataset_info.json, rows from its arrow files."""
    import pyarrow as pa

    info = json.loads((folder / "dataset_info.json").read_text())
    rows = 0
    for file in sorted(folder.glob("*.arrow")):  # save_to_disk's data files, Arrow IPC streams
        with pa.memory_map(str(file)) as source:
            rows += pa.ipc.open_stream(source).read_all().num_rows
    return list((info.get("features") or {}).keys()), rows


def _check_columns(name: str, path: Path, columns: list[str]) -> None:
    if {"prompt", "completion"} <= set(columns) or "text" in columns or len(columns) == 1:
        return
    have = ", ".join(columns) or "none"
    raise ConfigError(f"parameter '{name}': '{path}' has columns {have}; it needs 'prompt' and 'completion' "
                      "columns (or one 'text' column): rename yours to those")


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
