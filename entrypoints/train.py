"""MLproject entry `train`: thin wrapper; the work is in ade_mlflow_plugin.training."""
import sys

from ade_mlflow_plugin.training.entry import train

if __name__ == "__main__":
    sys.exit(train(sys.argv[1:]))
