"""mlflow.transformers: the hub commit recorded for a PEFT adapter logged without its base weights.

``mlflow.transformers.log_model`` of a PEFT model saves only the adapter and records the base by hub
name plus ``source_model_revision``, which it asks the hub for (``HfApi.model_info``: the repo's
LATEST commit). That call fails offline (a training job often has no hub access) and may name a newer
base than the one trained on. log_model has no argument for the revision, so the module global
``mlflow.transformers.flavor_config.get_latest_commit_for_repo`` (an import of
``mlflow.utils.huggingface_utils.get_latest_commit_for_repo``) is answered for the pinned repo.

Scoped and thread-safe: the global is replaced only while at least one pin is active (reference
counted under a lock) by a dispatcher that answers from the CALLING thread's pins and delegates
everything else to MLflow's function, so another thread logging a model at the same time gets
MLflow's own answer. Public fallback (when MLflow renames the global): no pin, MLflow asks the hub
(needs network; records the latest commit). tests/adapters/test_mlflow_transformers.py fails first.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

_NAME = "get_latest_commit_for_repo"
_lock = threading.Lock()
_local = threading.local()
_state: dict[str, Any] = {"active": 0, "original": None}


def _flavor_config() -> Any:
    from mlflow.transformers import flavor_config

    return flavor_config


def _dispatch(repo: str) -> str:
    """What MLflow calls: this thread's pin for ``repo``, else MLflow's own lookup."""
    pins: dict[str, str] = getattr(_local, "pins", {})
    if repo in pins:
        return pins[repo]
    original: Callable[[str], str] = _state["original"]
    return original(repo)


def can_pin() -> bool:
    """Whether MLflow still looks the revision up through the name this adapter answers for."""
    return callable(getattr(_flavor_config(), _NAME, None))


@contextmanager
def pinned_hub_revision(repo: str, revision: str | None) -> Iterator[bool]:
    """While inside, MLflow records ``revision`` as the hub commit of ``repo`` for this thread.

    Yields whether the pin is in place (False: no revision known, or MLflow changed; it then asks
    the hub itself).
    """
    if revision is None or not can_pin():
        yield False
        return
    _install()
    pins: dict[str, str] = getattr(_local, "pins", {})
    saved = pins.get(repo)
    _local.pins = {**pins, repo: revision}
    try:
        yield True
    finally:
        restored = dict(_local.pins)
        if saved is None:
            restored.pop(repo, None)
        else:
            restored[repo] = saved
        _local.pins = restored
        _uninstall()


def _install() -> None:
    module = _flavor_config()
    with _lock:
        if _state["active"] == 0:
            _state["original"] = getattr(module, _NAME)
            setattr(module, _NAME, _dispatch)
        _state["active"] += 1


def _uninstall() -> None:
    module = _flavor_config()
    with _lock:
        _state["active"] -= 1
        if _state["active"] == 0:
            setattr(module, _NAME, _state["original"])
            _state["original"] = None
