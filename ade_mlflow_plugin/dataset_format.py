"""What a user's dataset path holds (core): its format, files per split, columns and row count, checked.

JSON Lines, Parquet or a saved Hugging Face dataset; rows need `prompt` and `completion` columns, or one text
column. :func:`inspect` reads only what it needs to check that (schemas, first lines, row counts; pyarrow and
json, no `datasets`). Two wings use it, so it lives in the core: the backend checks a local `-P dataset=`
before anything is submitted (backend/params.py: a wrong file is one line there, not a failed job), and the
job reads the rows it found (dataset/user.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ade_mlflow_plugin.errors import ConfigError

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
FOLDER_SUFFIXES = (".jsonl", ".ndjson", *PARQUET_SUFFIXES)
EVAL_SPLITS = ("eval", "validation", "test")  # a saved DatasetDict's held-out split, first found wins
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
