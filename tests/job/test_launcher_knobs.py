"""The launcher's knobs, when they reach it unchecked (a local job inherits the shell's environment): a bad value
is one line naming the variable, not int()'s "invalid literal for int() with base 10"."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.job.launcher import LaunchError, distributed

TWO_HOSTS = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}


@pytest.mark.parametrize("name,value", [("ADE_RENDEZVOUS_TIMEOUT_S", "20m"), ("ADE_NPROC_PER_NODE", "two"),
                                        ("ADE_RENDEZVOUS_TIMEOUT_S", "0")])
def test_a_bad_knob_names_the_variable(name, value, monkeypatch):
    monkeypatch.setenv(name, value)
    with pytest.raises(LaunchError, match=rf"^{name}='{value}' is not a whole number > 0: fix or unset it"):
        distributed("python x.py", TWO_HOSTS, 1)


def test_good_knobs_reach_torchrun(monkeypatch):
    monkeypatch.setenv("ADE_RENDEZVOUS_TIMEOUT_S", "1200")
    monkeypatch.setenv("ADE_NPROC_PER_NODE", "3")
    command = distributed("python x.py", TWO_HOSTS, 1)
    assert "--rdzv_conf=timeout=1200" in command and "--nproc_per_node=3" in command
