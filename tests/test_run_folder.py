"""``RunFolder``: what the commands read back from a run folder, named in one place."""

import json

import pytest

from lasnn_deploy.errors import UserError
from lasnn_deploy.run_folder import STAGE_SEEDS, RunFolder, stage_seed


def test_the_method_is_read_from_the_config_at_its_top_level_or_in_a_section(tmp_path):
    run = RunFolder.of(tmp_path / "student.safetensors")  # a file in the folder names the folder
    assert run.folder == tmp_path and run.method() == "student"  # no config.json: an imported student
    (tmp_path / "config.json").write_text(json.dumps({"training": {"method": "kd"}}))
    assert run.method() == "kd"
    (tmp_path / "config.json").write_text(json.dumps({"method": "lasnn", "training": {"method": "kd"}}))
    assert run.method() == "lasnn" and run.converted is None
    (tmp_path / "converted.safetensors").write_bytes(b"")
    assert run.converted == tmp_path / "converted.safetensors"


def test_an_unfinished_run_has_no_metrics_and_says_so(tmp_path):
    with pytest.raises(UserError, match="metrics.json"):
        RunFolder.of(tmp_path).metrics()


def test_each_stage_draws_its_own_seed():
    seeds = {stage_seed(s, stage) for s in (0, 1) for stage in STAGE_SEEDS}
    assert len(seeds) == 2 * len(STAGE_SEEDS) and stage_seed(0, "validation") == 5
