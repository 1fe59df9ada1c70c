"""MLproject entry `main`: thin wrapper; the work is in ade_mlflow_plugin.training."""
import sys

from ade_mlflow_plugin.training.entry import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
