"""Toy multi-host entry for stops (torchrun, gloo): every rank takes steps that each hold a collective, as
training does, until a SIGTERM reaches any rank.

--on-stop agree: the ranks agree on the stop every step (an all_reduce of the flag, as the training loop does)
    and all exit 143 at the same step, having "checkpointed".
--on-stop leave: the signalled rank leaves the collective at once (its partners' next all_reduce raises,
    "Connection closed by peer"), then waits until the lead host's launcher has ended the MLflow run before it
    exits: the order in which a peer that loses its partner ends first, made certain instead of likely.
"""
import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--on-stop", choices=("agree", "leave"), default="agree")
args = parser.parse_args()
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
dist.init_process_group("gloo")
rank = dist.get_rank()
host = os.environ.get("SM_CURRENT_HOST")
print(f"rank {rank} on {host}: pid {os.getpid()}", flush=True)


def wait_for_the_run_to_end() -> None:
    import mlflow

    client, run_id = mlflow.MlflowClient(), os.environ["MLFLOW_RUN_ID"]
    deadline = time.monotonic() + 120  # a bound against a hang, not a timing assumption
    while client.get_run(run_id).info.status == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)


for step in range(1, 1200):  # bounded: about 4 minutes
    if stopped and args.on_stop == "leave":
        print(f"rank {rank} on {host}: SIGTERM, leaving the collective at step {step}", flush=True)
        dist.destroy_process_group()
        wait_for_the_run_to_end()
        sys.exit(143)
    flag = torch.tensor([1.0 if stopped else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() > 0:
        print(f"rank {rank} on {host}: stopping at step {step}", flush=True)
        # Left to the interpreter's exit, gloo's teardown may abort (SIGABRT) while the peer hangs up too.
        dist.destroy_process_group()
        sys.exit(143)
    print(f"rank {rank} on {host}: step {step}", flush=True)
    time.sleep(0.2)
dist.destroy_process_group()
