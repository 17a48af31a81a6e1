"""The command line: help texts, one-line errors with exit status 2, the installed entry point."""

import re
import subprocess
import sys

import pytest
from helpers import make_student, run_cli

from lasnn_deploy.student import save_student

COMMANDS = ["demo", "train", "evaluate", "export", "validate", "energy", "import", "tradeoff"]


def test_help_lists_every_command(capsys):
    """In the command list itself: the epilog's examples name most commands too."""
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    listed = re.findall(r"^    (\S+)  ", out.split("positional arguments:")[1].split("options:")[0], re.M)
    assert set(COMMANDS) <= set(listed)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_shows_an_example(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "example:" in out and "lasnn-deploy " + command in out


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_option_is_one_line(capsys):
    code, _, err = run_cli(capsys, "export", "run", "--target", "onnx", "--bogus")
    assert_one_line_error(code, err, "unrecognized arguments: --bogus")


def test_train_with_missing_data_folder_names_the_layout(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "train", "--dataset", "mnist", "--data-dir", "/nonexistent", "--out", str(tmp_path / "run")
    )
    assert_one_line_error(code, err, "/nonexistent", "MNIST/raw/")
    assert not (tmp_path / "run" / "student.safetensors").exists()


def test_missing_model_and_unknown_target(capsys, tmp_path):
    code, _, err = run_cli(capsys, "export", str(tmp_path / "nothing"), "--target", "onnx")
    assert_one_line_error(code, err, "no student at")
    save_student(make_student(), tmp_path)
    code, _, err = run_cli(capsys, "export", str(tmp_path), "--target", "tflite")
    assert_one_line_error(code, err, "unknown export target 'tflite'")
    code, _, err = run_cli(capsys, "validate", str(tmp_path), str(tmp_path / "missing.onnx"))
    assert_one_line_error(code, err, "no exported file")


def test_entry_point_is_installed():
    exe = __import__("pathlib").Path(sys.executable).with_name("lasnn-deploy")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("lasnn-deploy ")
