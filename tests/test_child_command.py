"""Child processes (engine process, tensor-parallel ranks, Python stubs) run the server's
own llmserve even when their working directory holds another folder named llmserve."""

from __future__ import annotations

import subprocess
import sys

from llmserve.child_command import child_env, module_command


def _decoy(tmp_path):
    (tmp_path / "llmserve").mkdir()
    (tmp_path / "llmserve" / "__init__.py").write_text("raise ImportError('the decoy llmserve')\n")
    return tmp_path


def test_module_command_ignores_an_llmserve_in_the_working_directory(tmp_path):
    cwd = _decoy(tmp_path)
    probe = "llmserve.core.errors"  # imports llmserve, does nothing as __main__
    plain = subprocess.run([sys.executable, "-m", probe], cwd=cwd, env=child_env(),
                           capture_output=True, text=True)
    assert "the decoy llmserve" in plain.stderr  # what `python -m` would have run
    ours = subprocess.run(module_command(sys.executable, probe), cwd=cwd, env=child_env(),
                          capture_output=True, text=True)
    assert ours.returncode == 0, ours.stderr


def test_module_command_passes_arguments_as_python_m_does(tmp_path):
    out = subprocess.run(module_command(sys.executable, "json.tool", "--compact"),
                         input='{"a": [1, 2]}', capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '{"a":[1,2]}'
