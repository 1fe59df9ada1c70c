"""MLproject entry `prepare_data`: thin wrapper; the work is in ade_mlflow_plugin.dataset."""
import sys

from ade_mlflow_plugin.dataset.run import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
