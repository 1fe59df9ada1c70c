"""MLproject entry `evaluate`: thin wrapper; the work is in ade_mlflow_plugin.training."""
import sys

from ade_mlflow_plugin.training.entry import evaluate

if __name__ == "__main__":
    sys.exit(evaluate(sys.argv[1:]))
