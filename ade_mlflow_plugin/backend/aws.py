"""The only module that makes boto3 sessions and clients.

Everything else receives an :class:`AwsClients` (or a single client) so tests can hand in clients
bound to moto or wrapped in botocore's Stubber. Throttling is retried by botocore's own "adaptive"
retry mode (exponential backoff with jitter plus client-side rate limiting); other errors are
translated into one clear line by :func:`ade_mlflow_plugin.errors.aws_error`.

Two kinds of caller, two retry budgets: what runs for a long time (submission, the follower, `logs
--follow`) keeps retrying, ~25 s before an unreachable endpoint becomes its line, since a network blip must
not end a follow; an interactive verb (``AwsClients(interactive=True)``: status, logs, cost, reconcile)
answers a person waiting at the prompt, so an unreachable endpoint fails in a few seconds.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ade_mlflow_plugin.errors import ConfigError, aws_error

T = TypeVar("T")

#: botocore's error classes, for the backend's `except` clauses: this module stays the one boto importer.
AWS_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError)
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError,)

RETRY_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 10},
    connect_timeout=10,
    read_timeout=60,
    user_agent_extra="ade-mlflow-plugin",
)
# Interactive verbs: 3 attempts in all (botocore counts 2 retries) of its standard mode (backoff at most 1 s,
# then 2 s; throttling is retried too) and short connects: a closed port fails in about a second, an
# endpoint that never answers the connect in ~12 s.
INTERACTIVE_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 2},
    connect_timeout=3,
    read_timeout=30,
    user_agent_extra="ade-mlflow-plugin",
)
# Prices are optional (a bundled table stands in): fail fast instead of retrying for a minute.
PRICING_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 2},
    connect_timeout=3,
    read_timeout=10,
    user_agent_extra="ade-mlflow-plugin",
)


@dataclass
class AwsClients:
    """Lazily made boto3 clients sharing one session and region; ``interactive``: the short retry budget
    for a verb someone waits on (INTERACTIVE_CONFIG) instead of the follower's (RETRY_CONFIG)."""

    region: str | None = None
    profile: str | None = None
    interactive: bool = False
    _session: boto3.session.Session | None = field(default=None, repr=False)
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def session(self) -> boto3.session.Session:
        if self._session is None:
            self._session = boto3.session.Session(profile_name=self.profile, region_name=self.region)
        return self._session

    def client(self, service: str) -> Any:
        if service not in self._clients:
            region = self.region or self.session.region_name
            config = INTERACTIVE_CONFIG if self.interactive else RETRY_CONFIG
            if service == "pricing":
                region = "us-east-1"  # the Price List API lives in a few regions only
                config = PRICING_CONFIG
            if region is None:
                raise ConfigError(
                    "no AWS region: set 'region' in the backend config or AWS_DEFAULT_REGION"
                )
            self._clients[service] = self.session.client(service, region_name=region, config=config)
        return self._clients[service]

    def set_client(self, service: str, client: Any) -> None:
        """Install a ready client (tests: a Stubber-wrapped one)."""
        self._clients[service] = client

    @property
    def sagemaker(self) -> Any:
        return self.client("sagemaker")

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def logs(self) -> Any:
        return self.client("logs")

    @property
    def cloudwatch(self) -> Any:
        return self.client("cloudwatch")

    @property
    def pricing(self) -> Any:
        return self.client("pricing")

    @property
    def sts(self) -> Any:
        return self.client("sts")


def aws_call(action: str, permission: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator: botocore errors leave the wrapped function as one-line
    :class:`~ade_mlflow_plugin.errors.AwsError` (naming ``permission`` when AWS refused the call)."""

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> T:
            try:
                return fn(*args, **kwargs)
            except (ClientError, BotoCoreError) as exc:
                raise aws_error(action, exc, permission=permission) from exc

        return wrapper

    return decorate
