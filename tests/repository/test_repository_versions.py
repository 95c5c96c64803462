import pytest
from repo_builder import write_model

from llmserve.config.parse import parse_config_text
from llmserve.repository import ConfigError, list_versions, select_versions


def _model(tmp_path, versions):
    model_dir = write_model(tmp_path, "m", versions={v: {} for v in versions})
    (model_dir / "7").write_text("a file, not a version folder")
    (model_dir / "configs").mkdir()
    return model_dir


def test_only_numeric_folders_without_leading_zero(tmp_path):
    model_dir = _model(tmp_path, ["1", "2", "10", "01", "0", "v3", "3a", "١"])
    assert list_versions(model_dir) == [1, 2, 10]


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("", [10]),
        ("version_policy: { latest: { num_versions: 2 } }", [2, 10]),
        ("version_policy: { latest: { num_versions: 9 } }", [1, 2, 10]),
        ("version_policy: { all: {} }", [1, 2, 10]),
        ("version_policy: { specific: { versions: [1, 10] } }", [1, 10]),
        ("version_policy: { specific: { versions: [2, 4] } }", [2]),
    ],
)
def test_policies(tmp_path, policy, expected):
    model_dir = _model(tmp_path, ["1", "2", "10"])
    assert select_versions(model_dir, parse_config_text(policy)) == expected


@pytest.mark.parametrize(
    "versions, policy",
    [
        ([], ""),
        (["1", "2"], "version_policy: { specific: { versions: [3] } }"),
        (["1"], "version_policy: { latest: { num_versions: 0 } }"),
        (["01", "x"], "version_policy: { all: {} }"),
    ],
)
def test_policy_selecting_nothing_is_an_error(tmp_path, versions, policy):
    model_dir = _model(tmp_path, versions)
    with pytest.raises(ConfigError) as e:
        select_versions(model_dir, parse_config_text(policy))
    assert "at least one version must be available under the version policy of model 'm'" \
        in str(e.value)
    assert str(model_dir) in str(e.value)
