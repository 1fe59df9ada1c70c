"""The package's exception types and the one place that turns third-party errors into one line.

Every message a user sees is one line naming the problem and the fix. AWS (botocore) and MLflow
errors are translated here and nowhere else: :func:`aws_error`, :func:`mlflow_error`, and
:func:`first_line` for any other exception's text. botocore is imported only when an AWS error is
translated, so the job side and the CLI's startup do not pay for it.
"""
from __future__ import annotations

import re

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

#: Longest first line kept from a third-party message (a stack of HTML or JSON must not fill a terminal).
FIRST_LINE_CHARS = 300


class AdeError(MlflowException):
    """Base error: an operation failed. CLI exit code 1."""

    exit_code = 1

    def __init__(self, message: str, error_code: int = INTERNAL_ERROR) -> None:
        super().__init__(message, error_code=error_code)


class ConfigError(AdeError):
    """Bad input: a config key, parameter or argument is invalid. CLI exit code 2."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class AwsError(AdeError):
    """An AWS call failed for a reason the user must fix (permissions, missing resource).

    ``action`` and ``code`` (AWS's error code, "" for transport errors) let a caller that warns
    instead of failing recognise the same failure again (its message may name a changing resource).
    """

    def __init__(self, message: str, action: str = "", code: str = "") -> None:
        super().__init__(message)
        self.action = action
        self.code = code


class JobFailedError(AdeError):
    """The training job ended Failed or Stopped."""


def first_line(error: BaseException | str | None, limit: int = FIRST_LINE_CHARS) -> str:
    """The first non-empty line of an error (or a text), at most ``limit`` characters.

    An exception without a message gives its type name, so a line is never empty.
    """
    if isinstance(error, BaseException):
        text = getattr(error, "message", None) if isinstance(error, MlflowException) else None
        text = str(text if text is not None else error).strip()
        if not text:
            return type(error).__name__
    else:
        text = str(error or "").strip()
    # Credentials go before the cut, so no half password survives it.
    return without_credentials(_short_transport(re.split(r"[\r\n]", text, maxsplit=1)[0]))[:limit]


#: A URL: its scheme, its userinfo (user:password@, up to the netloc's last @), the rest, its query/fragment.
_URL = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^\s/?#]*@)?(?P<rest>[^\s?#]*)(?:[?#][^\s]*)?")


def without_credentials(text: str) -> str:
    """Every URL in ``text`` without its userinfo (user:password@), query and fragment (tokens, presigned
    signatures): MLflow's REST errors repeat the tracking URI as it was given, credentials included."""
    return _URL.sub(r"\g<scheme>\g<rest>", text)


# MLflow's REST client words an unreachable server as urllib3's whole retry story, which cuts off before
# the cause at any sensible length: keep the URL and say what happened.
_MLFLOW_TRANSPORT = re.compile(r"^(API request to \S+) failed with exception .*?(Max retries exceeded|timed out)")
_TRANSPORT_CAUSES = (("Connection refused", "connection refused"), ("ReadTimeout", "no answer (read timed out)"),
                     ("ConnectTimeout", "no answer (connect timed out)"), ("timed out", "no answer (timed out)"),
                     ("NameResolution", "host name not resolved"), ("Name or service not known", "host name not resolved"),
                     ("SSLError", "TLS handshake failed"), ("ResponseError", "the server kept answering errors"))


def _short_transport(line: str) -> str:
    """"API request to URL failed with exception HTTPConnectionPool(...): Max retries exceeded ... (Caused by
    NewConnectionError(...Connection refused))" -> "API request to URL failed: connection refused"."""
    match = _MLFLOW_TRANSPORT.match(line)
    if not match:
        return line
    cause = next((said for found, said in _TRANSPORT_CAUSES if found in line), "the server cannot be reached")
    return f"{match.group(1)} failed: {cause}"


# ---- AWS ------------------------------------------------------------------------------------------

# Error codes that mean "the user must fix something", with the fix to suggest.
AWS_FIXES = {
    "AccessDenied": "grant the permission (see examples/iam-policy.json) or use another role/profile",
    "AccessDeniedException": "grant the permission (see examples/iam-policy.json) or use another role/profile",
    # S3 answers a refused HEAD with a bare 403 and no message: name the likely cause.
    "403": "the credentials may not read/write this bucket: grant s3:GetObject/PutObject/ListBucket "
           "(see examples/iam-policy.json) or use another bucket",
    "UnrecognizedClientException": "check your AWS credentials (aws sts get-caller-identity)",
    "InvalidClientTokenId": "check your AWS credentials (aws sts get-caller-identity)",
    "ExpiredToken": "refresh your AWS session credentials",
    "ExpiredTokenException": "refresh your AWS session credentials",
    "ResourceLimitExceeded": "ask AWS for a higher SageMaker quota for this instance type or pick another",
    "NoSuchBucket": "create the bucket or set 'bucket' in the backend config to an existing one",
    "ValidationException": "fix the value AWS names above",
    "ResourceNotFound": "check the job name and region",
}
ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "403"})
NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "ResourceNotFound"})


def aws_error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError ("AccessDenied", "404", ...), else ""."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return ""
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode", "")
    return str(error.get("Code") or status or "")


def aws_reason(exc: BaseException) -> str:
    """One short line: error code and message (an HTML error page becomes just its HTTP status)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return first_line(" ".join(str(exc).split()), 200)
    message = " ".join(str((response.get("Error") or {}).get("Message", "")).split())
    if message.startswith("<"):
        message = ""
    code = aws_error_code(exc)
    code = f"HTTP {code}" if code.isdigit() else code
    return f"{code}: {message[:200]}".strip(": ")


def aws_error(action: str, exc: BaseException, fix: str | None = None,
              permission: str | None = None) -> AwsError:
    """Turn a botocore error into one line naming what failed and how to fix it.

    ``fix`` overrides the suggestion looked up by error code; ``permission`` (e.g.
    "logs:GetLogEvents") is named only when AWS refused the call, other errors keep their own fix.
    """
    kind = type(exc).__name__ if is_aws_error(exc) else ""  # by name: backend/aws.py is the boto importer
    if kind == "NoCredentialsError":
        return AwsError(f"{action}: no AWS credentials found; configure them (aws configure, AWS_PROFILE "
                        "or an instance role)", action, "NoCredentials")
    if kind == "NoRegionError":
        return AwsError(f"{action}: no AWS region; set 'region' in the backend config or AWS_DEFAULT_REGION",
                        action, "NoRegion")
    code = aws_error_code(exc)
    if code:
        suggestion = fix or AWS_FIXES.get(code, "see the AWS message above")
        if permission and code in ACCESS_DENIED and not fix:
            suggestion = f"grant {permission} (see examples/iam-policy.json) or use another role/profile"
        return AwsError(f"{action} failed: {aws_reason(exc)} ({suggestion})", action, code)
    return AwsError(f"{action} failed: {first_line(exc)}" + (f" ({fix})" if fix else ""), action)


def is_aws_error(exc: BaseException) -> bool:
    """True for botocore's errors (client and transport), without importing botocore up front."""
    module = type(exc).__module__ or ""
    return module.startswith("botocore.")


# ---- MLflow ---------------------------------------------------------------------------------------

TRACKING_FIX = "check MLFLOW_TRACKING_URI and that the server is up"
#: MLflow error codes meaning "no such entity" or "bad name": the user's input, not the server.
MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})


def mlflow_error(action: str, exc: BaseException, fix: str = TRACKING_FIX,
                 error_class: type[AdeError] = AdeError) -> AdeError:
    """One line for a failed MLflow call: what failed, MLflow's first line, and the fix."""
    return error_class(f"{action} failed: {first_line(exc)}; {fix}")


def is_missing(exc: BaseException) -> bool:
    """True when MLflow refused a call because the named entity does not exist or the name is invalid:
    the user's input is wrong (exit 2), not the server."""
    return getattr(exc, "error_code", None) in MISSING_CODES


def registry_error(what: str, exc: BaseException, missing_fix: str, fix: str = TRACKING_FIX) -> AdeError:
    """One line for a failed model-registry call: a ConfigError naming ``missing_fix`` when the model,
    version or alias does not exist, else an AdeError naming ``fix``."""
    if is_missing(exc):
        return ConfigError(f"{what}: {first_line(exc)}; {missing_fix}")
    return AdeError(f"{what}: {first_line(exc)}; {fix}")


def warning_key(exc: BaseException) -> tuple[str, str]:
    """What makes two failures "the same" for a warn-once caller: the AWS action and error code when
    known (AWS messages name request ids and resources that change), else the one-line description."""
    if isinstance(exc, AwsError) and exc.code:
        return exc.action, exc.code
    if is_aws_error(exc) and aws_error_code(exc):
        return type(exc).__name__, aws_error_code(exc)
    return "", describe(exc)


def describe(exc: BaseException) -> str:
    """A one-line description of any error for a warning: translated when it is AWS's or MLflow's."""
    if is_aws_error(exc):
        return aws_reason(exc)
    return first_line(exc) if isinstance(exc, MlflowException) else f"{type(exc).__name__}: {first_line(exc)}"


__all__ = ["AdeError", "ConfigError", "AwsError", "JobFailedError", "first_line", "aws_error",
           "aws_error_code", "aws_reason", "is_aws_error", "mlflow_error", "is_missing", "registry_error",
           "warning_key", "describe", "AWS_FIXES", "ACCESS_DENIED", "NOT_FOUND", "TRACKING_FIX",
           "MISSING_CODES"]
