"""AWS's PyTorch training image for a config, resolved offline with sagemaker-core's own tables."""
from __future__ import annotations

import logging
import sys

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError, first_line

LOCAL_IMAGE = "ade-mlflow-plugin/local:latest"  # local mode runs on this machine; no image is pulled


def resolve_image_uri(config: CloudTrainingConfig, region: str) -> str:
    """`image_uri` when given; else AWS's PyTorch training image for framework/python version."""
    if config.image_uri:
        return config.image_uri
    if config.mode == "local":
        return LOCAL_IMAGE
    # sagemaker-core logs its defaults lookups at INFO on import; keep the console for the job.
    logging.getLogger("sagemaker").setLevel(logging.WARNING)
    from sagemaker.core import image_uris

    try:
        return image_uris.retrieve(
            "pytorch", region, version=config.framework_version, py_version=config.py_version,
            instance_type=config.instance_type, image_scope="training",
        )
    except ValueError as exc:
        raise ConfigError(
            f"backend config 'framework_version'/'py_version': no AWS PyTorch training image for "
            f"{config.framework_version}/{config.py_version} on {config.instance_type} in {region} "
            f"({first_line(exc)}); set 'image_uri' or pick a supported version such as 2.5/py311"
        ) from None


def image_python_version(config: CloudTrainingConfig) -> str:
    """The training image's Python as pip's --python-version wants it ("3.11"). Local mode's "image" is this
    interpreter; otherwise `py_version` (an `image_uri` of one's own is taken to match it too)."""
    if config.mode == "local":
        return f"{sys.version_info.major}.{sys.version_info.minor}"
    digits = config.py_version[2:]  # "py311": the options kit has checked the pattern py3\d+
    return f"{digits[0]}.{digits[1:]}"


def image_torch_version(config: CloudTrainingConfig) -> str | None:
    """The torch the image brings (kept, never shipped): AWS's images carry `framework_version`; local mode
    the torch installed here, if any."""
    if config.mode != "local":
        return config.framework_version
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
