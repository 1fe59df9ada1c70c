"""An unreachable AWS endpoint: interactive verbs give their one line after a few quick attempts; the
follower's clients keep botocore's long adaptive budget (a network blip must not end a follow).

Against a real closed port on 127.0.0.1 (connection refused); attempts are counted with botocore's public
``before-send`` event, never timed (the suite runs on a loaded machine)."""
from __future__ import annotations

import socket

import pytest

from ade_mlflow_plugin.backend.aws import INTERACTIVE_CONFIG, AwsClients
from ade_mlflow_plugin.backend.reconcile import describe_job, open_job
from ade_mlflow_plugin.errors import AwsError


@pytest.fixture
def closed_port(monkeypatch):
    """AWS_ENDPOINT_URL at a port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for name in ("AWS_ENDPOINT_URL_SAGEMAKER", "AWS_ENDPOINT_URL_LOGS", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    return port


def _count_sends(client) -> list[str]:
    sent: list[str] = []
    client.meta.events.register("before-send", lambda **kwargs: sent.append("x"))
    return sent


def test_status_reads_the_job_with_three_attempts_and_one_line(closed_port):
    job = open_job("sagemaker", "ade-unreachable", "us-east-1", None)
    sent = _count_sends(job.sagemaker)
    with pytest.raises(AwsError) as caught:
        describe_job(job, "ade-unreachable", "us-east-1")
    message = str(caught.value)
    assert message.startswith("DescribeTrainingJob failed: Could not connect to the endpoint URL")
    assert f"127.0.0.1:{closed_port}" in message and "\n" not in message
    assert len(sent) == 3  # botocore's standard mode: the call and 2 retries, backoff at most 1 s then 2 s


def test_the_status_verb_exits_in_one_line(closed_port, tmp_path, monkeypatch, capsys):
    """The console entry (cli.main) in this process: exit 1 and the one line on stderr."""
    from ade_mlflow_plugin.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(SystemExit) as exited:
        main(["status", "ade-unreachable", "--region", "us-east-1", "--job-root", str(tmp_path)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 1, lines
    assert len(lines) == 1 and "DescribeTrainingJob failed: Could not connect" in lines[0], lines


def test_follower_clients_keep_the_long_budget_and_interactive_ones_the_short():
    follower = AwsClients(region="us-east-1").sagemaker.meta.config
    interactive = AwsClients(region="us-east-1", interactive=True).sagemaker.meta.config
    assert follower.retries == {"mode": "adaptive", "total_max_attempts": 11}
    assert interactive.retries == {"mode": "standard", "total_max_attempts": 3}
    assert interactive.connect_timeout == INTERACTIVE_CONFIG.connect_timeout <= 3


@pytest.fixture
def client_kinds(monkeypatch):
    """(service, interactive) of every client a verb makes."""
    made: list[tuple[str, bool]] = []
    make = AwsClients.client

    def spy(self, service):
        made.append((service, self.interactive))
        return make(self, service)

    monkeypatch.setattr(AwsClients, "client", spy)
    return made


@pytest.mark.parametrize("argv, action", [
    (["logs", "ade-unreachable", "--region", "us-east-1"], "Could not connect"),
    (["cost", "ade-unreachable", "--region", "us-east-1"], "Could not connect"),
])
def test_logs_and_cost_ask_for_interactive_clients_and_fail_in_one_line(argv, action, closed_port, client_kinds,
                                                                         tmp_path, monkeypatch, capsys):
    from ade_mlflow_plugin.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert exited.value.code == 1 and len(lines) == 1 and action in lines[0], lines
    aws = [kind for kind in client_kinds if kind[0] != "pricing"]  # prices have their own short budget
    assert aws and all(interactive for _, interactive in aws), client_kinds
