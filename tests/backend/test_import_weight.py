"""House rule: the backend, the CLI and the registry import no torch/transformers/peft."""
import subprocess
import sys


def test_client_side_imports_no_training_stack():
    code = ("import sys; import ade_mlflow_plugin.cli, ade_mlflow_plugin.launch, "
            "ade_mlflow_plugin.backend.project_backend, ade_mlflow_plugin.backend.commands, "
            "ade_mlflow_plugin.backend.local, ade_mlflow_plugin.job.launcher, ade_mlflow_plugin.config; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'datasets') if m in sys.modules]; "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
