"""Two budget guards, one stop: a job told its price and budget stops itself (job/budget.py); the follower's
guard (backend/monitor.py) then only alerts (the ade_cost_alert hook lives on the client) and sends no
StopTrainingJob. A job told no price is still stopped by the follower (tests/backend/test_monitor.py)."""
from __future__ import annotations

import mlflow
import pytest

from ade_mlflow_plugin.backend.monitor import job_keeps_its_budget
from ade_mlflow_plugin.hooks import get_plugin_manager, register_plugin
from ade_mlflow_plugin.job import contract
from tests.backend.test_cost import g5_answer
from tests.backend.test_monitor import (STEP_S, AlertRecorder, FakeClock, config, describe, ended, follow,
                                        new_job, stubbed_clients)

TOLD = {contract.HP_USD_PER_HOUR: '"1.212"', contract.HP_MAX_COST_USD: '"0.4"', contract.HP_ON_BUDGET: '"stop"'}


@pytest.mark.parametrize("hyper, keeps", [
    (TOLD, True),
    ({**TOLD, contract.HP_ON_BUDGET: '"alert"'}, False),  # the job only tags: nobody stops it but us
    ({contract.HP_USD_PER_HOUR: '"1.212"'}, False),  # a price, no budget
    ({contract.HP_MAX_COST_USD: '"0.4"'}, False),  # no price: the job cannot count
    ({}, False),
])
def test_which_jobs_keep_their_own_budget(hyper, keeps):
    assert job_keeps_its_budget({"HyperParameters": hyper}) is keeps


def test_the_follower_leaves_the_stop_to_a_job_that_keeps_its_budget(tracking_uri, aws, tmp_path):
    job, t0 = new_job()
    training = [describe(job, "InProgress", "Training", t0, start_after_s=STEP_S, HyperParameters=TOLD)
                for _ in range(6)]
    answers = [describe(job, "InProgress", "Starting", t0, HyperParameters=TOLD), *training,
               describe(job, "Stopping", "Stopping", t0, start_after_s=STEP_S, HyperParameters=TOLD),
               ended(job, "Stopped", t0, training_s=780, billable_s=260, HyperParameters=TOLD)]
    clients, stubs = stubbed_clients(job, answers, pricing=g5_answer("1.2120000000"))  # no StopTrainingJob
    recorder = AlertRecorder()
    pm = get_plugin_manager(builtin_sync=False)
    register_plugin(pm, recorder, "recorder")
    run_id, console, _ = follow(config(max_cost_usd=0.40), clients, job, FakeClock(t0), tmp_path, pm)
    for stub in stubs:
        stub.assert_no_pending_responses()
    # The hook still hears every threshold, the last one as "stop": the job is being stopped (by itself).
    assert [c["action"] for c in recorder.calls] == ["warn", "warn", "stop"]
    text = console.getvalue()
    assert f"{job}: the job's own budget guard stops it" in text
    assert "StopTrainingJob sent" not in text and "WARNING" not in text, text
    # The stop reason is the launcher's to write (run_state.py); the follower tags nothing of its own.
    assert "ade.stop_detail" not in mlflow.get_run(run_id).data.tags
