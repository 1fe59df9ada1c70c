"""adapters.mlflow_transformers: MLflow still asks flavor_config.get_latest_commit_for_repo, and the pin
is scoped to the thread that set it (tests/training/test_model_portability.py logs a real model offline)."""
from __future__ import annotations

import inspect
import threading

import pytest

from ade_mlflow_plugin.adapters import mlflow_transformers

CHANGED = "mlflow changed {name}: update ade_mlflow_plugin/adapters/mlflow_transformers.py and docs/internals.md"


def test_mlflow_looks_the_revision_up_through_the_module_global():
    from mlflow.transformers import flavor_config

    assert mlflow_transformers.can_pin(), CHANGED.format(name="mlflow.transformers.flavor_config."
                                                              "get_latest_commit_for_repo (gone)")
    callers = [name for name, fn in inspect.getmembers(flavor_config, inspect.isfunction)
               if fn.__module__ == flavor_config.__name__ and "get_latest_commit_for_repo" in fn.__code__.co_names]
    assert callers, CHANGED.format(name="flavor_config (no function calls get_latest_commit_for_repo any more)")


@pytest.fixture
def hub_latest(monkeypatch):
    """MLflow's hub lookup answered without the hub (HfApi would need network): 'latest' for any repo."""
    from mlflow.transformers import flavor_config

    def latest(repo: str) -> str:
        return "latest"

    monkeypatch.setattr(flavor_config, "get_latest_commit_for_repo", latest)
    return latest


def test_pin_answers_only_for_its_repo_and_thread_and_is_undone(hub_latest):
    from mlflow.transformers import flavor_config

    other_thread: list[str] = []
    with mlflow_transformers.pinned_hub_revision("org/base", "c" * 40) as pinned:
        assert pinned
        assert flavor_config.get_latest_commit_for_repo("org/base") == "c" * 40
        assert flavor_config.get_latest_commit_for_repo("org/other") == "latest"
        worker = threading.Thread(target=lambda: other_thread.append(
            flavor_config.get_latest_commit_for_repo("org/base")))
        worker.start()
        worker.join()
    assert other_thread == ["latest"]  # a model logged elsewhere meanwhile gets MLflow's own answer
    assert flavor_config.get_latest_commit_for_repo is hub_latest


def test_concurrent_pins_do_not_cross(hub_latest):
    from mlflow.transformers import flavor_config

    inside, release, answers = threading.Barrier(3), threading.Event(), {}

    def log(revision: str) -> None:
        with mlflow_transformers.pinned_hub_revision("org/base", revision):
            inside.wait()
            release.wait()
            answers[revision] = flavor_config.get_latest_commit_for_repo("org/base")

    workers = [threading.Thread(target=log, args=(rev,)) for rev in ("a" * 40, "b" * 40)]
    for worker in workers:
        worker.start()
    inside.wait()  # both pins active at once
    release.set()
    for worker in workers:
        worker.join()
    assert answers == {"a" * 40: "a" * 40, "b" * 40: "b" * 40}
    assert flavor_config.get_latest_commit_for_repo is hub_latest


def test_no_revision_leaves_mlflow_alone(hub_latest):
    from mlflow.transformers import flavor_config

    with mlflow_transformers.pinned_hub_revision("org/base", None) as pinned:
        assert not pinned and flavor_config.get_latest_commit_for_repo is hub_latest
