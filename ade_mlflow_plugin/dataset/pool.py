"""Mine files on all available cores, in file order, with a progress bar.

Workers are forked where the platform allows: spawn would re-run the caller's main module, which breaks
scripts without an `if __name__ == "__main__"` guard. Workers only read files and run tree-sitter,
regexes and numpy; they touch no CUDA, MLflow or tokenizer state inherited from the parent.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from multiprocessing import get_all_start_methods, get_context

from ade_mlflow_plugin.dataset.mine import MinedFile, MineOptions, mine_file
from ade_mlflow_plugin.dataset.walk import SourceFile

#: Below this many bytes of source, starting processes costs more than it saves.
PARALLEL_MIN_BYTES = 2_000_000
MAX_WORKERS = 8


def default_workers() -> int:
    """CPUs this process may run on (honours taskset/cgroup affinity), at most MAX_WORKERS."""
    try:
        return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def warm(languages: set[str]) -> None:
    """Load grammars and the secret scanner's plugins once, before workers fork, so each starts ready."""
    from ade_mlflow_plugin import secret_scan
    from ade_mlflow_plugin.dataset import languages as langs

    for name in languages:
        langs.parser_for(name)
        langs.unit_query(name)
    secret_scan.configure()


def _iter_mined(files: list[SourceFile], options: MineOptions, workers: int) -> Iterator[MinedFile]:
    if workers <= 1:
        yield from (mine_file(f, options) for f in files)
        return
    chunksize = max(1, min(16, len(files) // (workers * 8)))
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context(method)) as executor:
        yield from executor.map(partial(mine_file, options=options), files, chunksize=chunksize)


def mine_all(files: list[SourceFile], options: MineOptions = MineOptions(), *, workers: int | None = None,
             progress: bool = True) -> list[MinedFile]:
    """MinedFile for every file, in the order given."""
    if workers is None:
        workers = default_workers() if sum(f.size for f in files) >= PARALLEL_MIN_BYTES else 1
    warm({f.language for f in files})
    results = _iter_mined(files, options, min(workers, max(1, len(files))))
    if progress:
        from tqdm.auto import tqdm

        results = tqdm(results, total=len(files), desc="mining", unit="file", leave=False)
    return list(results)
