"""Checkpoint folder, SIGTERM handling and picking the checkpoint to resume from.

The Trainer writes `checkpoint-<step>/` folders into the dir the launcher hands over (ADE_CHECKPOINT_DIR,
synced to S3 by SageMaker) and keeps the last K. A folder only counts once COMPLETE_MARKER is in it:
it is written after the Trainer has finished saving, so a job killed mid-save resumes from the one
before. SIGTERM (stop, spot reclaim; 120 s grace) sets a flag; the loop saves at the end of the current
step and the entry exits 143.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path
from typing import Any

from ade_mlflow_plugin.job import contract, manifest

COMPLETE_MARKER = manifest.MARKER  # the job writes it; sync-checkpoints reads it
SIGTERM_EXIT_CODE = 143


def checkpoint_dir() -> Path:
    return Path(os.environ.get(contract.ENV_CHECKPOINT_DIR) or "checkpoints").expanduser().resolve()


def mark_complete(folder: Path) -> None:
    """Write the marker with the folder's manifest (job/manifest.py): whoever copies the checkpoint (the
    sync-checkpoints verb) sees from it alone whether the copy is whole and which files it has."""
    manifest.write(folder)


#: The run's list of kept checkpoints (an artifact) and its short form (a tag); the location they sync to.
INDEX_ARTIFACT = "checkpoints.json"
STEPS_TAG = "ade.checkpoints"
CHECKPOINT_URI_TAG = "ade.checkpoint_uri"


def checkpoint_index(root: Path, location: str | None) -> dict[str, Any]:
    """The complete checkpoints under root as the run lists them: step, eval_loss (when the Trainer
    evaluated at that step), whether it is the best, size, and where it lives at the synced location."""
    entries = []
    found = complete_checkpoints(root)
    # The newest state knows the best so far (each checkpoint's own state only knew the best up to it).
    newest = json.loads((found[-1][1] / "trainer_state.json").read_text()) if found else {}
    best = Path(newest["best_model_checkpoint"]).name if newest.get("best_model_checkpoint") else None
    for step, folder in found:
        state = json.loads((folder / "trainer_state.json").read_text())
        evals = [e["eval_loss"] for e in state.get("log_history", []) if e.get("step") == step and "eval_loss" in e]
        files = [p for p in folder.rglob("*") if p.is_file()]
        entry = {"step": step, "path": folder.name, "eval_loss": evals[-1] if evals else None,
                 "best": folder.name == best,
                 "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                 "uri": f"{location.rstrip('/')}/{folder.name}" if location else None}
        entries.append(entry)
    return {"location": location, "checkpoints": entries}


# transformers is imported where used: the launcher side imports this module's constants without it.

def checkpoint_folder(root: Path, step: int) -> Path:
    """Where the Trainer saves the checkpoint of ``step``."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    return root / f"{PREFIX_CHECKPOINT_DIR}-{step}"


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file() and (folder / "trainer_state.json").is_file()


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under root, oldest first."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not root.is_dir():
        return []
    pattern, found = re.compile(rf"{re.escape(PREFIX_CHECKPOINT_DIR)}-(\d+)"), []
    for child in root.iterdir():
        match = pattern.fullmatch(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint: transformers' own pick, unless the job died while saving it
    (transformers knows no completeness); then the newest complete one before it."""
    from transformers.trainer_utils import get_last_checkpoint

    newest = get_last_checkpoint(str(root)) if root.is_dir() else None
    if newest is None or is_complete(Path(newest)):
        return Path(newest) if newest else None
    found = complete_checkpoints(root)
    return found[-1][1] if found else None


def finished_checkpoint(root: Path, max_steps: int) -> tuple[Path, Any] | None:
    """(folder, TrainerState) of the newest complete checkpoint when it is at the run's last step, else None.

    A restart after that checkpoint (a reclaim while the model was being evaluated or logged) has nothing
    left to train, and the Trainer, resumed there, would still run one more step. ``max_steps`` <= 0 means
    epochs: the step count the Trainer worked out for them is in the checkpoint's state.
    """
    from transformers import TrainerState

    folder = latest_checkpoint(root)
    if folder is None:
        return None
    state = TrainerState.load_from_json(str(folder / "trainer_state.json"))
    last = max_steps if max_steps > 0 else state.max_steps
    return (folder, state) if last and state.global_step >= last else None


ADAPTER_CONFIG = "adapter_config.json"  # what PEFT's save_pretrained writes beside the adapter weights


def adapter_shape(r: Any, alpha: Any, target_modules: Any) -> str:
    """The LoRA settings that decide whether saved adapter weights fit a model, as one short phrase."""
    if isinstance(target_modules, (list, tuple, set)):
        target_modules = ",".join(sorted(target_modules))
    return f"r={r}, alpha={float(alpha):g}, target_modules={target_modules}"


def check_adapter_matches(folder: Path | None, config: Any) -> None:
    """Refuse to resume from a checkpoint whose adapter was saved with other LoRA settings: PyTorch would
    fail deep in the load with a size-mismatch trace, or (another alpha) train on with the wrong scale.

    ``config`` is the run's TrainingConfig. "all-linear" is resolved by PEFT into module names when it
    saves, so target modules are compared only when the run names them.
    """
    import json

    if folder is None or not (folder / ADAPTER_CONFIG).is_file():
        return
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    wanted_modules = config.target_module_list
    same = saved.get("r") == config.lora_r and float(saved.get("lora_alpha", 0)) == float(config.lora_alpha)
    if same and wanted_modules != "all-linear":
        same = set(saved.get("target_modules") or []) == set(wanted_modules)
    if same:
        return
    from ade_mlflow_plugin.errors import ConfigError

    have = adapter_shape(saved.get("r"), saved.get("lora_alpha", 0), saved.get("target_modules"))
    want = adapter_shape(config.lora_r, config.lora_alpha, config.target_modules)
    raise ConfigError(f"the checkpoint location holds an adapter of LoRA {have} ({folder.name}) but this run "
                      f"asks for {want}: set a new checkpoint_s3_uri in the backend config to train from the "
                      "start (or run with the checkpoint's LoRA settings to resume it)")


def best_checkpoint(root: Path, state: Any) -> Path | None:
    """The checkpoint load_best chose (the state's best_model_checkpoint), found under root: the state
    names it by the path it had when saved, which a restart may see elsewhere."""
    named = getattr(state, "best_model_checkpoint", None)
    if not named:
        return None
    folder = root / Path(named).name
    return folder if is_complete(folder) else None


def load_adapter_weights(model: Any, folder: Path) -> None:
    """Put a checkpoint's adapter weights into the PEFT model (what resuming the Trainer would do)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME

    weights = folder / ADAPTER_SAFE_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"checkpoint {folder} has no {ADAPTER_SAFE_WEIGHTS_NAME}; delete the checkpoint "
                                "folder (or choose a new checkpoint_s3_uri) to train again")
    set_peft_model_state_dict(model, load_file(str(weights)))


class StopFlag:
    """Set by SIGTERM; read by the training loop at step boundaries."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.training = False  # before the loop starts there is nothing to save: exit at once

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def install(self) -> "StopFlag":
        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            self.set()
            if not self.training:
                raise SystemExit(SIGTERM_EXIT_CODE)

        signal.signal(signal.SIGTERM, handler)
        return self
