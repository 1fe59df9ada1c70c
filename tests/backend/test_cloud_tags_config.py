"""Backend config "tags" within AWS's pattern for tag keys and values ([\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*): a key such as
';' is one line at submission, not a CreateTrainingJob refusal after the upload (the property test's finding)."""
from __future__ import annotations

import pytest

from ade_mlflow_plugin.config import CloudTrainingConfig
from ade_mlflow_plugin.errors import ConfigError

BASE = {"role_arn": "arn:aws:iam::123456789012:role/SageMakerRole", "bucket": "ade-tags", "region": "us-east-1"}


@pytest.mark.parametrize("tags", [{";": ""}, {"team": "a&b"}, {"k\n": "v"}])
def test_a_tag_outside_aws_pattern_is_one_line_naming_tags(tags):
    with pytest.raises(ConfigError, match=r"^backend config 'tags': got .* expected tag keys and values of letters"):
        CloudTrainingConfig.from_backend_config({**BASE, "tags": tags})


def test_letters_of_any_script_spaces_and_aws_punctuation_pass():
    tags = {"équipe": "données vérifiées", "cost-center": "a b/c=d@e+f:g_h.i"}
    assert CloudTrainingConfig.from_backend_config({**BASE, "tags": tags}).tags == tags
