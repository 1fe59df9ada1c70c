"""CloudWatch log tailer for a training job: every `<job>/algo-N-*` stream, paginated, with a final drain.

SageMaker writes one stream per host under the log group `/aws/sagemaker/TrainingJobs`. The tailer
remembers each stream's forward token, so a poll only fetches new events; the caller backs off
between polls and calls :meth:`drain` once the job has ended so no trailing line is lost.

While a job is followed the tailer is one of the follower's observers (:meth:`on_poll`,
:meth:`on_end`), guarded like the others (submitted_run.Guarded): a refused or failed CloudWatch Logs call
is one warning and the job is still followed to its end. AWS errors leave it as one-line AwsError.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from ade_mlflow_plugin.backend.aws import aws_call

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
#: Named in the warning when CloudWatch Logs refuses the tailer (examples/iam-policy.json grants both).
PERMISSIONS = "logs:DescribeLogStreams and logs:GetLogEvents"


@dataclass
class LogTailer:
    """Follows all log streams of one job; writes lines to a console and to per-stream files."""

    logs_client: Any
    job_name: str
    out_dir: Path | None = None
    console: TextIO | None = sys.stdout
    group: str = LOG_GROUP
    _tokens: dict[str, str] = field(default_factory=dict)
    lines_seen: int = 0
    pause: Callable[[float], None] = time.sleep  # between drain rounds; the follower passes its own sleep

    @aws_call("DescribeLogStreams", permission=PERMISSIONS)
    def _streams(self) -> list[str]:
        paginator = self.logs_client.get_paginator("describe_log_streams")
        pages = paginator.paginate(logGroupName=self.group, logStreamNamePrefix=f"{self.job_name}/")
        try:
            return sorted(s["logStreamName"] for page in pages for s in page.get("logStreams", []))
        except self.logs_client.exceptions.ResourceNotFoundException:
            return []  # the group appears only once the first host starts logging

    # GetLogEvents has no boto3 paginator, and tailing must resume from each stream's last
    # nextForwardToken on the next poll anyway: the tokens are kept here, per stream.
    @aws_call("GetLogEvents", permission=PERMISSIONS)
    def _fetch(self, stream: str) -> list[str]:
        lines: list[str] = []
        while True:
            kwargs: dict[str, Any] = {"logGroupName": self.group, "logStreamName": stream, "startFromHead": True}
            if stream in self._tokens:
                kwargs["nextToken"] = self._tokens[stream]
            page = self.logs_client.get_log_events(**kwargs)
            lines += [event["message"] for event in page.get("events", [])]
            token = page.get("nextForwardToken")
            # CloudWatch signals the end of a stream by returning the token it was given.
            done = token is None or token == self._tokens.get(stream)
            if token:
                self._tokens[stream] = token
            if done or not page.get("events"):
                return lines

    # ---- the follower's observer interface (see submitted_run.Observer) ----
    def on_poll(self, description: dict[str, Any]) -> None:
        self.poll()

    def on_end(self, description: dict[str, Any]) -> None:
        self.drain(pause=self.pause)

    def poll(self) -> int:
        """Fetch and emit new lines of every stream; returns how many were new."""
        new = 0
        for stream in self._streams():
            host = stream.split("/", 1)[-1]
            lines = self._fetch(stream)
            if lines:
                self._emit(stream, host, lines)
                new += len(lines)
        self.lines_seen += new
        return new

    def drain(self, attempts: int = 3, pause: Callable[[float], None] | None = None) -> int:
        """After the job ended: poll until a round brings nothing new (events arrive late)."""
        pause = pause or self.pause
        total = 0
        for _ in range(attempts):
            got = self.poll()
            total += got
            if not got:
                break
            pause(1.0)
        return total

    def _emit(self, stream: str, host: str, lines: list[str]) -> None:
        if self.console is not None:
            for line in lines:
                self.console.write(f"[{host}] {line.rstrip()}\n")
            self.console.flush()
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            target = self.out_dir / (stream.replace("/", "_") + ".log")
            with open(target, "a", encoding="utf-8") as handle:
                handle.writelines(line.rstrip("\n") + "\n" for line in lines)
