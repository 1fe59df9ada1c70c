"""The before/after eval on the 1.3B layout: under the model's training attention (flex on a GPU) against
sdpa, the cut training/evaluation.py makes (EVAL_ATTENTION).

job_phases.py found the "before" eval taking 80 s of a 162 s job on an H100; this times its two parts on
16 examples of real code (one batch of evaluation.GENERATE_BATCH): eval_loss over them packed, and greedy
generation of 64 new tokens, first under sdpa, then under the model's own attention, each cut off after
--cap-s seconds (a SIGALRM).

    python3 benchmarks/job_phases_eval.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class Capped(Exception):
    pass


def _capped(exc: BaseException | None) -> bool:
    """Whether the alarm caused this exception (torch's compiler re-raises it wrapped)."""
    while exc is not None:
        if isinstance(exc, Capped) or "Capped" in type(exc).__name__ + str(exc)[:100]:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def prompts(count: int) -> list[dict[str, str]]:
    """Code from this repository cut into prompt (~40 lines) + completion (the next 3 lines)."""
    out = []
    for path in sorted((REPO / "ade_mlflow_plugin").rglob("*.py")):
        lines = path.read_text().splitlines(keepends=True)
        if len(lines) > 60:
            out.append({"prompt": "".join(lines[:40]), "completion": "".join(lines[40:43])})
        if len(out) == count:
            break
    return out


def timed(fn) -> tuple[float, object]:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-s", type=float, default=25.0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--tiny", action="store_true", help="the tiny layout (a CPU check of the script)")
    args = parser.parse_args()
    from benchmarks.job_phases import build_model
    from ade_mlflow_plugin.adapters.transformers_attn import attn_implementation
    from ade_mlflow_plugin.config.training import TrainingConfig
    from ade_mlflow_plugin.training import evaluation
    from ade_mlflow_plugin.training.model import load_for_training
    from ade_mlflow_plugin.training.packing import build_rows

    with tempfile.TemporaryDirectory() as tmp:
        base = build_model(Path(tmp) / "base", REPO / "tests" / "fixtures" / "codebases" / "polyglot", tiny=args.tiny)
        model, tokenizer, _ = load_for_training(TrainingConfig.from_params({"base_model": str(base)}))
        examples = prompts(evaluation.GENERATE_BATCH)
        own = attn_implementation(model.get_base_model().config)
        result = {"attention": own, "prompts": len(examples), "max_new_tokens": 64}
        rows, _ = build_rows(tokenizer, examples, 2048, True)
        for label, attention in (("sdpa", "sdpa"), ("sdpa_again", "sdpa"), ("own", None), ("own_again", None)):
            signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(Capped()))
            signal.alarm(int(args.cap_s))
            try:
                with evaluation.attention_as(model, attention):
                    loss_s, loss = timed(lambda: evaluation.eval_loss(model, rows, tokenizer.pad_token_id))
                result[f"eval_loss_{label}"] = [loss_s, loss]
                print(f"eval_loss under {label}: {loss_s:.2f} s, {loss}", flush=True)
                seconds, _ = timed(lambda: evaluation.completions(model, tokenizer, examples, 64,
                                                                  attention=attention))
                result[label] = seconds
            except Exception as exc:  # noqa: BLE001 - the alarm may land inside inductor, which wraps it
                if not _capped(exc):
                    raise
                result[label] = f"> {args.cap_s:.0f} s (cut off)"
            finally:
                signal.alarm(0)
            print(f"generation under {label} ({attention or own}): {result[label]}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
