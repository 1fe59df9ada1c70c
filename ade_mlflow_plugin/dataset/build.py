"""Codebase -> datasets.DatasetDict (train/eval), stats.json, digest; logged to an active MLflow run."""
from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.config.dataset import DatasetConfig
from ade_mlflow_plugin.dataset import dedup, examples, select
from ade_mlflow_plugin.dataset.languages import DISPLAY_NAME, SPECS
from ade_mlflow_plugin.dataset.mine import MinedFile, MineOptions
from ade_mlflow_plugin.dataset.pool import mine_all
from ade_mlflow_plugin.dataset.prompts import Formatter
from ade_mlflow_plugin.dataset.walk import DEFAULT_MAX_FILE_BYTES, walk_codebase
from ade_mlflow_plugin.errors import AdeError, ConfigError

logger = logging.getLogger(__name__)
SPLITS = ("train", "eval")
STATS_FILE = "stats.json"
DIGEST_CHARS = 16  # MLflow shows (and stores) short dataset digests
CHARS_PER_TOKEN_CAP = 8  # a unit longer than this many characters per allowed token cannot fit


@dataclass
class PreparedDataset:
    """A prepared dataset: the DatasetDict, its stats, a content digest and where it was saved."""

    dataset: Any  # datasets.DatasetDict with splits "train" and "eval"
    stats: dict
    digest: str
    path: Path | None


def _validate(codebase: Path, num_examples: Any, synthetic_ratio: Any, eval_fraction: Any, max_tokens: Any,
              seed: Any) -> tuple[int, float, float, int, int]:
    """Checks every argument with the dataset options' own parsers (config/dataset.py); returns
    (num_examples, synthetic_ratio, eval_fraction, max_tokens, seed) parsed."""
    if not codebase.is_dir():
        what = "does not exist" if not codebase.exists() else "is not a directory"
        raise ConfigError(f"codebase '{codebase}' {what}: pass the root folder of the code to mine")
    options = DatasetConfig(num_examples=num_examples, synthetic_ratio=synthetic_ratio, eval_fraction=eval_fraction,
                            max_tokens=max_tokens, seed=seed)
    return options.num_examples, options.synthetic_ratio, options.eval_fraction, options.max_tokens, options.seed


def _check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder the dataset cannot be saved in, before any mining (minutes on a large
    codebase) is spent on it: one line naming the folder and the fix."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output '{out_dir}' is a file: pass a folder path for the dataset")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "dataset_dict.json").exists():
        raise ConfigError(f"output folder '{out_dir}' is not empty and holds no prepared dataset: "
                          "pass a new or empty folder")
    _check_writable(out_dir)


def _check_writable(out_dir: Path) -> None:
    """Create the folder and write (then remove) a probe file in it: the same calls save_to_disk makes, so
    a read-only disk, a missing permission or a parent that is a file all fail here, not after mining."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".ade-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"output folder '{out_dir}' cannot be written ({reason}): pass a folder you can "
                          "write to with --out") from None


def _cyclic_gc_paused(func: Callable) -> Callable:
    """Run func with Python's cyclic garbage collector off (restored after).

    A build keeps hundreds of thousands of objects (units, chunks, examples) until it returns and makes
    next to no cyclic garbage (~200 objects on the stdlib): reference counting frees what it drops. The
    collector's full passes rescan everything for nothing, ~0.4 s of the main process's single-core time
    on the stdlib; forked mining workers inherit the setting and skip their passes too.
    """
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        enabled = gc.isenabled()
        gc.disable()
        try:
            return func(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return wrapper


@_cyclic_gc_paused
def build_dataset(codebase: str | Path, out_dir: str | Path | None, *, num_examples: int,
                  synthetic_ratio: float, eval_fraction: float = 0.1, seed: int = 42, tokenizer: Any = None,
                  max_tokens: int = 2048, log_to_mlflow: bool = True, exclude: list[str] | tuple[str, ...] = (),
                  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, workers: int | None = None,
                  progress: bool = True) -> PreparedDataset:
    """Mine `codebase` into a train/eval DatasetDict of prompt/completion examples.

    `exclude` takes extra .gitignore-style patterns; `workers` defaults to the CPUs available.
    """
    codebase = Path(codebase).expanduser()
    num_examples, synthetic_ratio, eval_fraction, max_tokens, seed = _validate(
        codebase, num_examples, synthetic_ratio, eval_fraction, max_tokens, seed)
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None:
        _check_out_dir(out)
    timer = _Timer()
    walked = walk_codebase(codebase, exclude=list(exclude), max_file_bytes=max_file_bytes)
    timer.lap("walk")
    if not walked.files:
        raise ConfigError(f"codebase '{codebase}' has no source files in a supported language "
                          f"({', '.join(sorted({DISPLAY_NAME.get(n, n) for n in SPECS}))}): point it at a code repository")
    files = mine_all(walked.files, MineOptions(max_unit_chars=max_tokens * CHARS_PER_TOKEN_CAP), workers=workers,
                     progress=progress)
    timer.lap("mine")
    drops = Counter(walked.skipped)
    for mf in files:
        drops.update(mf.drops)
        if mf.skipped:
            drops[mf.skipped] += 1
    kept, dup_drops = dedup.dedup_units(files)
    drops.update(dup_drops)
    drops.update(dedup.drop_repeating_chunks(files, kept))
    timer.lap("dedup")
    mined, synthetic = examples.candidates(files, kept)
    renderer = examples.Renderer(files, Formatter(tokenizer), seed)
    rows = select.select(mined, synthetic, limit=num_examples, ratio=synthetic_ratio, seed=seed,
                         renderer=renderer, count=select.TokenCounter(tokenizer), max_tokens=max_tokens,
                         drops=drops)
    timer.lap("render_tokenise")
    if not rows:
        raise ConfigError(f"codebase '{codebase}' yields no training examples (files mined: "
                          f"{sum(1 for f in files if not f.skipped)}): point it at a folder with functions or classes")
    train, evals = select.split_by_file(rows, eval_fraction, seed)
    with ThreadPoolExecutor(max_workers=1) as side:
        # The tokenizer releases the GIL: token stats are counted beside the (Python-bound) table and digest.
        counted = side.submit(_token_stats, train, evals, tokenizer, seed)
        columns = {"train": _columns(train), "eval": _columns(evals)}
        dataset = to_dataset_dict(columns)
        digest = compute_digest(columns)
        timer.lap("split_build")
        tokens = counted.result()
    timer.lap("token_stats")  # only what is left to wait for
    stats = _stats(codebase, files, walked, kept, drops, rows, train, evals, mined, synthetic, tokens,
                   num_examples=num_examples, ratio=synthetic_ratio, eval_fraction=eval_fraction,
                   seed=seed, tokenizer=tokenizer, max_tokens=max_tokens, digest=digest)
    if eval_fraction > 0 and not evals:
        stats["examples"]["eval_note"] = ("eval split is empty: the examples come from a single file, and no "
                                          "file may be in both splits")
    for note in (stats["examples"]["shortfall"], stats["examples"].get("eval_note")):
        if note:
            logger.warning(note)
    if out is not None:
        # One shard per split even when a split is empty: with none, load_from_disk fails (IndexError).
        dataset.save_to_disk(str(out), num_shards={split: 1 for split in SPLITS})
        timer.lap("save")
    stats["timings_s"] = timer.laps
    stats["worker_cpu_s"] = _worker_timings(files)
    if out is not None:
        (out / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True))
    prepared = PreparedDataset(dataset=dataset, stats=stats, digest=digest, path=out)
    if log_to_mlflow:
        from ade_mlflow_plugin.dataset.tracking import log_to_active_run

        if log_to_active_run(prepared, codebase):
            timer.lap("mlflow")
    return prepared


class _Timer:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 4)
        self._last = now


def _worker_timings(files: list[MinedFile]) -> dict[str, float]:
    total: Counter = Counter()
    for mf in files:
        total.update(mf.timings)
    return {k: round(v, 4) for k, v in sorted(total.items())}


def _token_stats(train: list, evals: list, tokenizer: Any, seed: int) -> dict[str, dict]:
    count = select.TokenCounter(tokenizer)
    return {"train": select.token_totals(train, count, seed), "eval": select.token_totals(evals, count, seed)}


def _columns(rows: list) -> dict[str, list[str]]:
    return {c: [getattr(r, c) for r in rows] for c in examples.COLUMNS}


def to_dataset_dict(columns: dict[str, dict[str, list[str]]]):
    import datasets
    import pyarrow as pa

    features = datasets.Features({c: datasets.Value("string") for c in examples.COLUMNS})
    # Arrow string arrays built in one C pass: given Python lists, from_dict encodes every value through
    # the features in Python (~0.3 s for 10k examples), for the same table.
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(
        {c: pa.array(values, type=pa.string()) for c, values in columns[split].items()}, features=features)
        for split in SPLITS})


def compute_digest(columns: dict[str, dict[str, list[str]]]) -> str:
    """sha256 of every row of every split, in order: equal for equal content."""
    sha = hashlib.sha256()
    for split in SPLITS:
        for row in zip(*(columns[split][c] for c in examples.COLUMNS)):
            sha.update(json.dumps([split, *row], ensure_ascii=False).encode("utf-8"))
            sha.update(b"\n")
    return sha.hexdigest()[:DIGEST_CHARS]


def _split_stats(rows: list, tokens: dict) -> dict:
    return {
        "examples": len(rows),
        "files": len({r.path for r in rows}),
        "by_source": dict(sorted(Counter(r.source for r in rows).items())),
        "by_task": dict(sorted(Counter(r.task for r in rows).items())),
        "by_language": dict(sorted(Counter(r.language for r in rows).items())),
        "tokens": tokens,
    }


def _stats(codebase, files, walked, kept, drops, rows, train, evals, mined, synthetic, tokens, *, num_examples,
           ratio, eval_fraction, seed, tokenizer, max_tokens, digest) -> dict:
    total = len(rows)
    shortfall = None
    if total < num_examples:
        shortfall = (f"the codebase yields {total} usable examples at synthetic_ratio {ratio}, "
                     f"fewer than num_examples={num_examples}: using all {total}")
    units_by_language = Counter()
    for fi, mf in enumerate(files):
        units_by_language[mf.language] += sum(kept[fi])
    return {
        "codebase": str(codebase),
        "params": {"num_examples": num_examples, "synthetic_ratio": ratio, "eval_fraction": eval_fraction,
                   "seed": seed, "max_tokens": max_tokens},
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else None,
        "token_count": "tokenizer" if tokenizer is not None else "approximate (regex words and symbols)",
        "files": {"source_files": len(walked.files), "mined": sum(1 for f in files if not f.skipped),
                  "lines": sum(f.lines for f in files),
                  "by_language": dict(sorted(Counter(f.language for f in files if not f.skipped).items()))},
        "units": {"found": sum(len(k) for k in kept) + drops.get("unit_secret", 0) + drops.get("unit_too_long", 0),
                  "kept": sum(sum(k) for k in kept), "by_language": dict(sorted(units_by_language.items()))},
        "drops": dict(sorted(drops.items())),
        "examples": {"available": {"mined": len(mined), "synthetic": len(synthetic)}, "total": total,
                     "mined": sum(1 for r in rows if r.source == "mined"),
                     "synthetic": sum(1 for r in rows if r.source == "synthetic"), "shortfall": shortfall},
        "splits": {"train": _split_stats(train, tokens["train"]), "eval": _split_stats(evals, tokens["eval"])},
        "digest": digest,
    }


def load_prepared(path: str | Path) -> PreparedDataset:
    """Read a dataset saved by build_dataset (save_to_disk folder with stats.json)."""
    import datasets

    path = Path(path).expanduser()
    stats_file = path / STATS_FILE
    if not (path / "dataset_dict.json").is_file() or not stats_file.is_file():
        raise ConfigError(f"'{path}' is not a prepared dataset (no dataset_dict.json and stats.json): "
                          "run `ade-mlflow prepare-data` first and pass its --out folder")
    try:
        dataset = datasets.DatasetDict({split: load_split(path / split) for split in SPLITS})
        stats = json.loads(stats_file.read_text())
    except (OSError, ValueError) as exc:
        raise AdeError(f"could not read prepared dataset '{path}': {exc}") from exc
    return PreparedDataset(dataset=dataset, stats=stats, digest=stats["digest"], path=path)


def load_split(folder: Path) -> Any:
    """One saved split. A split saved empty by an older build (a single-file codebase leaves eval empty)
    has no data file at all, which load_from_disk cannot read: it is rebuilt empty from its features."""
    import datasets

    if any(folder.glob("*.arrow")):  # save_to_disk's data files (data-00000-of-00001.arrow, ...)
        return datasets.load_from_disk(str(folder))
    info = datasets.DatasetInfo.from_directory(str(folder))
    features = info.features or datasets.Features({c: datasets.Value("string") for c in examples.COLUMNS})
    return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
