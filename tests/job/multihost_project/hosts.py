"""Toy multi-host entry (torchrun, gloo): an all-reduce across every host's ranks; rank 0 logs to MLflow.

--fail-rank R: that rank raises after the all-reduce (the others keep working until stopped);
--wait-for-stop true: every rank works until SIGTERM, then exits 143 as the training entry does.
"""
import argparse
import os
import signal
import sys
import time

import torch
import torch.distributed as dist

parser = argparse.ArgumentParser()
parser.add_argument("--fail-rank", type=float, default=-1)
parser.add_argument("--wait-for-stop", default="false")
args = parser.parse_args()
stopped = []
signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
host = os.environ.get("SM_CURRENT_HOST")
total = torch.tensor([float(rank + 1)])
dist.all_reduce(total)
print(f"rank {rank}/{world} on {host}: all-reduce {total.item()}", flush=True)
if rank == 0:
    import mlflow

    mlflow.MlflowClient().log_metric(os.environ["MLFLOW_RUN_ID"], "world_size", world)
if rank == int(args.fail_rank):
    raise ValueError(f"rank {rank} on {host} gave up on purpose")
if int(args.fail_rank) >= 0 or args.wait_for_stop == "true":
    step = 0
    while not stopped and step < 600:  # bounded: 2 minutes at most
        print(f"rank {rank} on {host}: step {step}", flush=True)
        step += 1
        time.sleep(0.2)
    if stopped:
        print(f"rank {rank} on {host}: SIGTERM, exiting", flush=True)
        sys.exit(143)
dist.destroy_process_group()
