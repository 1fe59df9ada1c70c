"""Whole-job time: the `main` entry run as a job runs it, on a realistic job, its phases tabled.

What a user pays for is the whole job, not the training loop. This builds the job of issue 20 item 3 and
runs the very entry a job runs (`entrypoints/main.py`, a subprocess attached to a run by MLFLOW_RUN_ID,
checkpoints and model dir as the container contract sets them), with tracking to a local sqlite file:

  codebase   a real codebase present on the machine (default: this repository), 1000 examples mined
  model      the deepseek-coder-1.3b layout (24 layers, hidden 2048) with random weights and a byte-level BPE
             trained on that codebase (as the tests build theirs), saved and loaded through from_pretrained
  job        1 epoch, max_seq_len 2048, everything else the entry's defaults, a registered version

The entry times its own phases (training/phases.py) from its process's start; this prints its table, the
training share (target: >= 80 %) and the wall time seen from outside, and writes them with the device and
versions to --json. Anything after `--` goes to the entry as it is (e.g. `-- --eval_samples 0`).

    .venv/bin/python benchmarks/job_phases.py --tiny                 # CPU: a tiny model, a smaller job
    python3 benchmarks/job_phases.py --json benchmarks/results/job_phases-<gpu>-<date>.json   # GPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYOUT_1_3B = dict(hidden=2048, layers=24, heads=16, vocab_size=32256)  # deepseek-coder-1.3b
LAYOUT_TINY = dict(hidden=64, layers=2, heads=4, vocab_size=1024)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model, 120 examples, seq 512 (CPU check)")
    parser.add_argument("--codebase", default=str(REPO), help="the code to mine (default: this repository)")
    parser.add_argument("--num-examples", type=int, default=None)
    parser.add_argument("--max-seq-len", type=int, default=None)
    parser.add_argument("--base-model", default=None, help="a model folder built by an earlier run (in its "
                                                           "workdir, base-model/): no second build")
    parser.add_argument("--workdir", default=None, help="keep the model, runs and logs here (default: a temp dir)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    args.codebase = str(Path(args.codebase).resolve())  # the entry runs in the work folder
    args.num_examples = args.num_examples or (120 if args.tiny else 1000)
    args.max_seq_len = args.max_seq_len or (512 if args.tiny else 2048)
    return args, extra


def build_model(out: Path, codebase: Path, tiny: bool) -> Path:
    """Random weights in the chosen layout (built on the GPU when there is one: seconds, not a minute) and a
    tokenizer trained on the codebase, both saved with save_pretrained."""
    import torch
    from transformers import GenerationConfig, LlamaForCausalLM

    from ade_mlflow_plugin.training.tiny import tiny_config, train_tokenizer

    layout = LAYOUT_TINY if tiny else LAYOUT_1_3B
    tokenizer = train_tokenizer(codebase, layout["vocab_size"])
    config = tiny_config(tokenizer, layout["hidden"], layout["layers"], layout["heads"])
    config.vocab_size = max(config.vocab_size, layout["vocab_size"])  # the real model's embedding size
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, do_sample=False,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if cuda:
        torch.cuda.empty_cache()
    return out


def new_run(tracking_uri: str, artifacts: Path) -> str:
    """A run made the way the launcher makes it (the entry attaches to it)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("job-phases", artifact_location=artifacts.as_uri())
    return client.create_run(experiment).info.run_id


def run_entry(args: argparse.Namespace, extra: list[str], model: Path, work: Path, tracking_uri: str,
              run_id: str) -> tuple[int, float, Path]:
    """The main entry as a job runs it; returns (exit code, wall seconds seen from here, its log)."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": run_id,
           "ADE_CHECKPOINT_DIR": str(work / "checkpoints"), "SM_MODEL_DIR": str(work / "model-dir"),
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                                  os.environ.get("PYTHONPATH")]))}
    env.pop("TRAINING_JOB_NAME", None)
    command = [sys.executable, str(REPO / "entrypoints" / "main.py"), "--codebase", args.codebase,
               "--base_model", str(model), "--num_examples", str(args.num_examples), "--epochs", "1",
               "--max_seq_len", str(args.max_seq_len), "--registered_model_name", "job-phases", *extra]
    log = work / "entry.log"
    started = time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            out.write(line)
            sys.stdout.write(line)
        code = proc.wait()
    return code, time.time() - started, log


def environment() -> dict[str, str]:
    import mlflow
    import peft
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "mlflow": mlflow.__version__}


def job_facts(log: Path) -> dict[str, object]:
    """What the entry's log says about the job's size: the rows line and the steps."""
    facts: dict[str, object] = {}
    for line in log.read_text().splitlines():
        if "train: " in line and " rows (" in line:
            facts["rows_line"] = line.split("train: ", 1)[1]
        if line.startswith("ade-metrics step="):
            facts["steps"] = int(line.split()[1].split("=")[1])
    return facts


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="job-phases-") as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        built = time.perf_counter()
        model = Path(args.base_model) if args.base_model else build_model(work / "base-model",
                                                                            Path(args.codebase), args.tiny)
        print(f"model ready in {time.perf_counter() - built:.1f} s: {model}", flush=True)
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        run_id = new_run(tracking_uri, work / "artifacts")
        code, outside, log = run_entry(args, extra, model, work, tracking_uri, run_id)
        if code != 0:
            print(f"the main entry exited {code}: see its output above", file=sys.stderr)
            return 1
        from mlflow import MlflowClient

        from ade_mlflow_plugin.training import phases

        client = MlflowClient(tracking_uri)
        summary = json.loads(Path(client.download_artifacts(run_id, phases.ARTIFACT, str(work))).read_text())
        result = {**environment(), "settings": {"codebase": args.codebase, "num_examples": args.num_examples,
                                                "max_seq_len": args.max_seq_len, "epochs": 1, "tiny": args.tiny,
                                                "extra": extra},
                  "job": job_facts(log), "outside_wall_seconds": outside, "phases": summary}
    print(f"\nwhole job: {summary['wall_seconds']:.1f} s inside the job ({outside:.1f} s from outside, model "
          f"build not counted); training share {summary['training_share']:.1%} (target >= 80 %)")
    print(phases.table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
