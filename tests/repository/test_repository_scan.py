import os

import pytest
from repo_builder import write_model

from llmserve.core.errors import ErrorCode
from llmserve.repository import ConfigError, find_model, scan_repositories


def test_scan_several_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_model(a, "m1")
    write_model(a, "m-2_X")
    write_model(b, "m3")
    (a / "README.md").write_text("not a model")
    (a / ".git").mkdir()
    (a / "__pycache__").mkdir()
    found = scan_repositories([a, b])
    assert found == {"m1": a / "m1", "m-2_X": a / "m-2_X", "m3": b / "m3"}


def test_custom_backend_folder_name_allowed(tmp_path):
    write_model(tmp_path, "model.identity", config=None, versions={1: {}})
    assert list(scan_repositories([tmp_path])) == ["model.identity"]


@pytest.mark.parametrize("bad", ["my model", "m@1", "a.b.c", "modèle", "m$x", "m.", ".m.x"])
def test_bad_names_rejected(tmp_path, bad):
    if bad.startswith("."):
        (tmp_path / bad).mkdir()  # hidden: skipped, not an error
        assert scan_repositories([tmp_path]) == {}
        return
    (tmp_path / bad).mkdir()
    with pytest.raises(ConfigError) as e:
        scan_repositories([tmp_path])
    assert e.value.code == ErrorCode.INVALID_ARG
    assert f"invalid model name '{bad}'" in str(e.value)
    assert "letters" in str(e.value) and "'-'" in str(e.value)
    assert "\n" not in str(e.value)


def test_duplicate_name_across_roots(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_model(a, "same")
    write_model(b, "same")
    with pytest.raises(ConfigError) as e:
        scan_repositories([a, b])
    assert "model 'same' appears in more than one model repository" in str(e.value)
    assert str(a / "same") in str(e.value) and str(b / "same") in str(e.value)


def test_symlink_escaping_root_refused(tmp_path):
    outside = write_model(tmp_path / "elsewhere", "real")
    root = tmp_path / "repo"
    root.mkdir()
    os.symlink(outside, root / "linked")
    with pytest.raises(ConfigError) as e:
        scan_repositories([root])
    assert "symlink leading outside the model repository" in str(e.value)


def test_symlink_inside_root_accepted(tmp_path):
    write_model(tmp_path, "real")
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert set(scan_repositories([tmp_path])) == {"real", "alias"}


def test_missing_root(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        scan_repositories([tmp_path / "nope"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        scan_repositories([tmp_path / "file"])


def test_find_model(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_model(b, "m")
    assert find_model([a, b], "m") == b / "m"
    assert find_model([a, b], "absent") is None
    for bad in ("../a", "a/m", "..", "/etc", "x y"):
        with pytest.raises(ConfigError):
            find_model([a, b], bad)


def test_find_model_refuses_escaping_symlink(tmp_path):
    outside = write_model(tmp_path / "elsewhere", "real")
    root = tmp_path / "repo"
    root.mkdir()
    os.symlink(outside, root / "linked")
    with pytest.raises(ConfigError, match="outside"):
        find_model([root], "linked")


def test_same_root_twice_is_not_a_duplicate(tmp_path):
    write_model(tmp_path, "m")
    assert scan_repositories([tmp_path, tmp_path / "sub" / "..", tmp_path]) == {"m": tmp_path / "m"}
    assert find_model([tmp_path, tmp_path], "m") == tmp_path / "m"
