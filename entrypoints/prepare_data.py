"""MLproject entry `prepare_data`: mine the codebase into a dataset and log it to the run."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--codebase", required=True)
    parser.add_argument("--base_model", default="")
    parser.add_argument("--num_examples", default="1000")
    parser.add_argument("--synthetic_ratio", default="0.3")
    parser.add_argument("--eval_fraction", default="0.1")
    parser.add_argument("--seed", default="42")
    parser.add_argument("--max_tokens", default="2048")
    # In a job: the container's output folder. Elsewhere not the project folder (`mlflow run .` runs in
    # it): a fresh temporary folder; the run's `dataset/` artifacts hold the copy that matters.
    parser.add_argument("--out", default=None,
                        help="default: $SM_OUTPUT_DATA_DIR/prepared_dataset, else a temporary folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from ade_mlflow_plugin.dataset.run import fraction, prepare_and_log, summary, whole_number
    from ade_mlflow_plugin.errors import AdeError

    args = parse_args(argv)
    if args.out is None:
        sm_output = os.environ.get("SM_OUTPUT_DATA_DIR")
        args.out = str(Path(sm_output) / "prepared_dataset") if sm_output else tempfile.mkdtemp(prefix="ade-data-")
    try:
        prepared = prepare_and_log(
            args.codebase, args.out, base_model=args.base_model or None, log_dataset=True,
            num_examples=whole_number(args.num_examples, "num_examples"),
            synthetic_ratio=fraction(args.synthetic_ratio, "synthetic_ratio"),
            eval_fraction=fraction(args.eval_fraction, "eval_fraction"),
            seed=whole_number(args.seed, "seed"), max_tokens=whole_number(args.max_tokens, "max_tokens"))
    except AdeError as exc:
        print(f"prepare_data: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(summary(prepared))
    return 0


if __name__ == "__main__":
    sys.exit(main())
