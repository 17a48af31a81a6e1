"""Every bad input gets one line on stderr, a non-zero exit, no traceback and no output file.

The cases are a table: each names the command line (``{w}``: a folder of inputs built once for the
module, ``{out}``: an empty folder of the case's own for outputs), the exit status and a fragment
of the one line expected. Add a row for every new way a user can get it wrong.
"""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import nir
import numpy as np
import onnx
import pytest
import torch
from helpers import make_student, run_cli, write_idx
from lasnn_deploy.exporters import export
from onnx import TensorProto, helper
from PIL import Image
from safetensors.torch import save_file

from lasnn_deploy.cli.parser import build_parser
from lasnn_deploy.errors import UserError
from lasnn_deploy.student import FORMAT, AvgPool, Conv, Flatten, Linear, SpikingStudent, StudentConfig, save_student


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # split on spaces after formatting {w} and {out}
    fragment: str
    code: int = 2
    make: tuple[str, ...] = ()  # paths to create in {out} first: "name/" a folder, else an empty file
    xfail: str = ""  # the fix that is still missing, for cases in files owned by others


CASES = [
    # -- student files ------------------------------------------------------------------------
    Case("model-missing", "evaluate {w}/nothing", "no student at"),
    Case("model-folder-without-student", "evaluate {w}/mnist", "no student at"),
    Case("student-zero-bytes", "evaluate {w}/zero.safetensors", "is not a readable student file"),
    Case("student-pickle-renamed", "evaluate {w}/pickle.safetensors", "is not a readable student file"),
    Case("student-torch-file", "evaluate {w}/student.pt", "is not a readable student file"),
    Case("student-truncated", "evaluate {w}/truncated.safetensors", "is not a readable student file"),
    Case("safetensors-without-our-metadata", "evaluate {w}/foreign.safetensors", "is not a lasnn-deploy student"),
    Case("description-not-json", "evaluate {w}/desc-not-json.safetensors", "malformed student description"),
    Case(
        "description-kernel-zero", "evaluate {w}/desc-kernel0.safetensors", "conv kernel_size must be an integer >= 1"
    ),
    Case("description-classes-as-text", "evaluate {w}/desc-classes.safetensors", "num_classes must be an integer"),
    Case("description-huge-layer", "evaluate {w}/desc-huge.safetensors", "tensor 'body.0.weight' is torch.float32"),
    Case("tensor-missing", "evaluate {w}/no-leak.safetensors", "tensor 'leak' is missing"),
    # -- run settings ---------------------------------------------------------------------------
    Case("timesteps-zero", "evaluate {w}/digits --timesteps 0", "time steps must be an integer in 1..10000"),
    Case("timesteps-huge", "evaluate {w}/digits --timesteps 10000000", "time steps must be an integer in 1..10000"),
    Case("energy-timesteps-zero", "energy {w}/digits --timesteps 0 --out {out}/e", "time steps must be an integer"),
    Case("samples-zero", "evaluate {w}/digits --samples 0", "argument --samples: must be at least 1"),
    Case(
        "samples-negative", "validate {w}/digits {w}/digits.onnx --samples -5", "argument --samples: must be at least 1"
    ),
    Case(
        "samples-not-a-number",
        "energy {w}/digits --samples many --out {out}/e",
        "expected an integer or 'all', got 'many'",
    ),
    Case(
        "weight-bits-zero",
        "energy {w}/digits --weight-bits 0 --out {out}/e",
        "argument --weight-bits: must be at least 1",
    ),
    Case("unknown-option", "export {w}/digits --target onnx --bogus", "unrecognized arguments: --bogus"),
    # -- data sets ------------------------------------------------------------------------------
    Case("dataset-unknown", "evaluate {w}/digits --dataset svhn", "unknown data set 'svhn'"),
    Case("mnist-without-data-dir", "evaluate {w}/digits --dataset mnist", "--data-dir is required for mnist"),
    Case("mnist-folder-missing", "evaluate {w}/digits --dataset mnist --data-dir {w}/nowhere", "does not exist"),
    Case(
        "mnist-data-dir-is-a-file",
        "evaluate {w}/digits --dataset mnist --data-dir {w}/zero.onnx",
        "is a file, not a folder",
    ),
    Case("mnist-empty-folder", "evaluate {w}/digits --dataset mnist --data-dir {w}/empty", "no MNIST test split"),
    Case(
        "mnist-truncated", "evaluate {w}/digits --dataset mnist --data-dir {w}/mnist-truncated", "corrupt or truncated"
    ),
    Case("mnist-bad-magic", "evaluate {w}/digits --dataset mnist --data-dir {w}/mnist-magic", "corrupt or truncated"),
    Case("mnist-label-count", "evaluate {w}/digits --dataset mnist --data-dir {w}/mnist-count", "images but 4 labels"),
    Case(
        "fashion-mnist-empty",
        "evaluate {w}/digits --dataset fashion-mnist --data-dir {w}/empty",
        "no FashionMNIST test split",
    ),
    Case("cifar10-empty", "evaluate {w}/digits --dataset cifar10 --data-dir {w}/empty", "no CIFAR10 data"),
    Case(
        "cifar10-corrupt-batch",
        "evaluate {w}/digits --dataset cifar10 --data-dir {w}/cifar-corrupt",
        "corrupt batch file",
    ),
    Case("cifar100-empty", "evaluate {w}/digits --dataset cifar100 --data-dir {w}/empty", "no CIFAR100 data"),
    Case("imagefolder-no-test", "evaluate {w}/digits --dataset imagefolder --data-dir {w}/empty", "no test/ folder"),
    Case(
        "imagefolder-no-classes",
        "evaluate {w}/digits --dataset imagefolder --data-dir {w}/images-empty",
        "holds no images",
    ),
    Case(
        "imagefolder-broken-image",
        "evaluate {w}/digits --dataset imagefolder --data-dir {w}/images-broken",
        "is not a readable image",
    ),
    # -- a student meets data of another shape ------------------------------------------------------
    Case(
        "digits-student-evaluated-on-mnist",
        "evaluate {w}/digits --dataset mnist --data-dir {w}/mnist",
        "the student expects images [N, 1, 16, 16]",
    ),
    Case(
        "digits-student-validated-on-mnist",
        "validate {w}/digits {w}/digits.onnx --dataset mnist --data-dir {w}/mnist",
        "the student expects images [N, 1, 16, 16]",
    ),
    Case(
        "digits-student-energy-on-mnist",
        "energy {w}/digits --dataset mnist --data-dir {w}/mnist --out {out}/e",
        "the student expects images [N, 1, 16, 16] but the data gives [5, 1, 28, 28]",
    ),
    Case(
        "student-with-fewer-classes",
        "validate {w}/five-classes {w}/digits.onnx --samples 20",
        "but the student has 5 classes",
    ),
    Case("onnx-exported-for-other-shape", "validate {w}/digits {w}/small.onnx", "was made for images [B, 1, 8, 8]"),
    Case("nir-exported-for-other-shape", "validate {w}/digits {w}/small.nir", "was made for images [B, 1, 8, 8]"),
    Case("lava-exported-for-other-shape", "validate {w}/digits {w}/small.h5", "was made for images [B, 1, 8, 8]"),
    # -- exported files -------------------------------------------------------------------------
    Case("export-file-missing", "validate {w}/digits {w}/missing.onnx", "no exported file at"),
    Case("import-file-missing", "import {w}/missing.nir --out {out}/imported", "no NIR file at"),
    Case("tradeoff-run-missing", "tradeoff {w}/nothing --out {out}/tradeoff", "no student at"),
    Case("suffix-names-no-target", "validate {w}/digits {w}/notes.txt", "cannot tell the target"),
    Case("png-renamed-onnx", "validate {w}/digits {w}/image.onnx", "is not a readable ONNX model"),
    Case("onnx-zero-bytes", "validate {w}/digits {w}/zero.onnx", "is not a readable ONNX model"),
    Case("onnx-truncated", "validate {w}/digits {w}/truncated.onnx", "is not a readable ONNX model"),
    Case("onnx-foreign-model", "validate {w}/digits {w}/foreign.onnx", "is not a lasnn-deploy ONNX export"),
    Case("nir-zero-bytes", "validate {w}/digits {w}/zero.nir", "is not a readable NIR file"),
    Case("nir-truncated", "validate {w}/digits {w}/truncated.nir", "is not a readable NIR file"),
    Case("nir-plain-hdf5", "validate {w}/digits {w}/plain-hdf5.nir", "is not a readable NIR file"),
    Case("nir-foreign-graph", "validate {w}/digits {w}/foreign.nir", "is not a lasnn-deploy NIR graph"),
    Case("h5-zero-bytes", "validate {w}/digits {w}/zero.h5", "is not a readable HDF5 file"),
    Case("png-renamed-h5", "validate {w}/digits {w}/image.h5", "is not a readable HDF5 file"),
    Case("h5-truncated", "validate {w}/digits {w}/truncated.h5", "is not a readable HDF5 file"),
    Case("h5-foreign", "validate {w}/digits {w}/foreign.h5", "is not a lasnn-deploy netx file"),
    # -- export ---------------------------------------------------------------------------------
    Case("target-unknown", "export {w}/digits --target tflite --out {out}/x.tflite", "unknown export target 'tflite'"),
    Case(
        "export-suffix-names-no-target", "export {w}/digits --target onnx --out {out}/student.txt", "must end in .onnx"
    ),
    Case(
        "export-suffix-of-another-target", "export {w}/digits --target nir --out {out}/student.onnx", "must end in .nir"
    ),
    Case(
        "export-out-is-a-folder",
        "export {w}/digits --target onnx --out {out}/dir.onnx",
        "is a folder",
        make=("dir.onnx/",),
    ),
    Case("export-nan-weights-onnx", "export {w}/nan --target onnx --out {out}/x.onnx", "'body.0.weight' contains NaN"),
    Case("export-nan-weights-nir", "export {w}/nan --target nir --out {out}/x.nir", "'body.0.weight' contains NaN"),
    Case("export-nan-weights-lava", "export {w}/nan --target lava --out {out}/x.h5", "'body.0.weight' contains NaN"),
    Case(
        "export-inf-threshold",
        "export {w}/inf-threshold --target onnx --out {out}/x.onnx",
        "'thresholds' contains NaN or inf",
    ),
    Case("validate-nan-student", "validate {w}/nan {w}/digits.onnx", "'body.0.weight' contains NaN"),
    Case(
        "export-soft-reset-to-nir",
        "export {w}/soft --target nir --out {out}/x.nir",
        "soft reset cannot be expressed in NIR",
    ),
    Case("export-soft-reset-to-lava", "export {w}/soft --target lava --out {out}/x.h5", "reset='soft'"),
    # -- energy ---------------------------------------------------------------------------------
    Case("hw-profile-unknown", "energy {w}/digits --hw loihi9 --out {out}/e", "unknown hardware profile 'loihi9'"),
    Case("hw-profile-not-toml", "energy {w}/digits --hw {w}/broken.toml --out {out}/e", "not valid TOML"),
    Case(
        "hw-profile-unknown-key",
        "energy {w}/digits --hw {w}/misspelt.toml --out {out}/e",
        "key 'energy.spikes' is unknown",
    ),
    Case(
        "hw-profile-file-missing", "energy {w}/digits --hw {w}/nowhere.toml --out {out}/e", "no hardware profile file"
    ),
    Case("energy-without-out", "energy {w}/digits", "the following arguments are required: --out"),
    Case(
        "energy-out-is-a-file",
        "energy {w}/digits --samples 2 --out {out}/taken",
        "is a file; give a folder",
        make=("taken",),
    ),
    # -- train ----------------------------------------------------------------------------------
    Case("train-without-out", "train --timesteps 4", "--out is required"),
    Case("train-out-is-a-file", "train --out {out}/taken", "is a file; give a folder", make=("taken",)),
    Case("train-timesteps-zero", "train --timesteps 0 --out {out}/run", "--timesteps must be positive"),
    Case("train-timesteps-huge", "train --timesteps 10000000 --out {out}/run", "--timesteps must be at most 10000"),
    Case("train-batch-size-negative", "train --batch-size -1 --out {out}/run", "--batch-size must be positive"),
    Case("train-dataset-unknown", "train --dataset svhn --out {out}/run", "invalid choice: 'svhn'"),
    Case(
        "train-mnist-folder-missing", "train --dataset mnist --data-dir {w}/nowhere --out {out}/run", "does not exist"
    ),
    Case("train-resume-nothing", "train --resume --out {out}/run", "nothing to resume"),
    Case("config-missing", "train --config {w}/nowhere.yaml --out {out}/run", "does not exist"),
    Case("config-json-suffix", "train --config {w}/config.json --out {out}/run", "must end in .yaml, .yml or .toml"),
    Case("config-yaml-unknown-key", "train --config {w}/unknown-key.yaml --out {out}/run", "unknown key 'epochs'"),
    Case(
        "config-yaml-wrong-type",
        "train --config {w}/wrong-type.yaml --out {out}/run",
        "key 'timesteps' must be an integer",
    ),
    Case("config-yaml-malformed", "train --config {w}/malformed.yaml --out {out}/run", "is not valid"),
    Case("config-yaml-not-a-mapping", "train --config {w}/list.yaml --out {out}/run", "must hold a mapping"),
    Case(
        "config-toml-unknown-key", "train --config {w}/unknown-key.toml --out {out}/run", "unknown key 'learning_rate'"
    ),
    Case(
        "config-toml-wrong-type",
        "train --config {w}/wrong-type.toml --out {out}/run",
        "key 'student_lr' must be a number",
    ),
    Case("config-toml-malformed", "train --config {w}/malformed.toml --out {out}/run", "is not valid"),
    Case("resume-corrupt-config-json", "train --resume --out {w}/run-corrupt-config", "config.json"),
    Case("resume-config-json-not-a-mapping", "train --resume --out {w}/run-list-config", "config.json"),
]


# -- the inputs, built once ------------------------------------------------------------------------
def digits_student(**config) -> SpikingStudent:
    """A 10-class student for the bundled 16x16 digits: conv-LIF-pool-flatten-linear."""
    cfg = StudentConfig(
        "digits",
        (1, 16, 16),
        10,
        (Conv(1, 4, 3, 1, 1), AvgPool(2), Flatten(), Linear(4 * 8 * 8, 10)),
        timesteps=3,
        **config,
    )
    torch.manual_seed(0)
    return SpikingStudent(cfg, leak=0.9, thresholds=[0.3]).eval()


def write_mnist(root: Path, test_labels: int = 5) -> Path:
    rng = np.random.default_rng(0)
    raw = root / "MNIST" / "raw"
    write_idx(raw, "train", rng.integers(0, 256, (6, 28, 28), dtype=np.uint8), rng.integers(0, 10, 6, dtype=np.uint8))
    write_idx(
        raw, "t10k", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8), rng.integers(0, 10, test_labels, dtype=np.uint8)
    )
    return raw


def save_description(path: Path, student: SpikingStudent, config: dict | str, tensors: dict | None = None) -> None:
    """A student file whose description (or tensors) someone edited by hand."""
    tensors = tensors if tensors is not None else {k: v.contiguous() for k, v in student.state_dict().items()}
    text = config if isinstance(config, str) else __import__("json").dumps(config)
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": text})


def truncate(source: Path, target: Path) -> None:
    data = source.read_bytes()
    target.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("inputs")
    digits = digits_student()
    save_student(digits, w / "digits")
    for target, suffix in (("onnx", ".onnx"), ("nir", ".nir"), ("lava", ".h5")):
        export(digits, target, w / f"digits{suffix}")
        export(make_student(), target, w / f"small{suffix}")
        truncate(w / f"digits{suffix}", w / f"truncated{suffix}")
        (w / f"zero{suffix}").write_bytes(b"")
    save_student(make_student(input_shape=(1, 16, 16)), w / "five-classes")
    save_student(digits_student(reset="soft"), w / "soft")
    broken = digits_student()
    with torch.no_grad():
        broken.body[0].weight[0, 0, 0, 0] = float("nan")
    save_student(broken, w / "nan")
    broken = digits_student()
    with torch.no_grad():
        broken.thresholds[0] = float("inf")
    save_student(broken, w / "inf-threshold")

    # student files that are not what they claim
    (w / "zero.safetensors").write_bytes(b"")
    (w / "pickle.safetensors").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    torch.save(digits.state_dict(), w / "student.pt")
    truncate(w / "digits" / "student.safetensors", w / "truncated.safetensors")
    save_file({"weight": torch.zeros(2)}, str(w / "foreign.safetensors"))
    config = digits.config.to_dict()
    save_description(w / "desc-not-json.safetensors", digits, "{layers: [")
    save_description(
        w / "desc-kernel0.safetensors",
        digits,
        {**config, "layers": [{**config["layers"][0], "kernel_size": 0}, *config["layers"][1:]]},
    )
    save_description(w / "desc-classes.safetensors", digits, {**config, "num_classes": "10"})
    huge = {
        **config,
        "layers": [
            {**config["layers"][0], "out_channels": 10**6},
            *config["layers"][1:3],
            {**config["layers"][3], "in_features": 64 * 10**6},
        ],
    }
    save_description(w / "desc-huge.safetensors", digits, huge)  # refused before 64e12 weights are allocated
    save_description(
        w / "no-leak.safetensors", digits, config, {k: v for k, v in digits.state_dict().items() if k != "leak"}
    )

    # exported files that are not ours
    Image.new("L", (8, 8)).save(w / "image.png")
    for suffix in (".onnx", ".h5"):
        (w / f"image{suffix}").write_bytes((w / "image.png").read_bytes())
    (w / "notes.txt").write_text("not a model\n")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), w / "foreign.onnx")
    nir.write(
        w / "foreign.nir",
        nir.NIRGraph(
            nodes={
                "input": nir.Input(input_type={"input": np.array([3])}),
                "linear": nir.Linear(weight=np.ones((2, 3))),
                "output": nir.Output(output_type={"output": np.array([2])}),
            },
            edges=[("input", "linear"), ("linear", "output")],
        ),
    )
    for name in ("plain-hdf5.nir", "foreign.h5"):
        with h5py.File(w / name, "w") as f:
            f["data"] = np.arange(3)

    # data folders
    (w / "empty").mkdir()
    write_mnist(w / "mnist")
    raw = write_mnist(w / "mnist-truncated")
    truncate(raw / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte")
    raw = write_mnist(w / "mnist-magic")
    data = bytearray((raw / "t10k-images-idx3-ubyte").read_bytes())
    data[2] = 0x55  # an unknown element type
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes(data))
    write_mnist(w / "mnist-count", test_labels=4)
    cifar = w / "cifar-corrupt" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]:
        (cifar / name).write_bytes(b"not a pickle")
    (w / "images-empty" / "test").mkdir(parents=True)
    (w / "images-broken" / "test" / "cat").mkdir(parents=True)
    (w / "images-broken" / "test" / "cat" / "0.png").write_bytes(b"\x89PNG but no image")

    # configuration and profile files
    (w / "config.json").write_text('{"timesteps": 4}')
    (w / "unknown-key.yaml").write_text("epochs: 3\n")
    (w / "wrong-type.yaml").write_text("timesteps: 2.5\n")
    (w / "malformed.yaml").write_text("timesteps: [4\n")
    (w / "list.yaml").write_text("- timesteps\n- 4\n")
    (w / "unknown-key.toml").write_text("learning_rate = 0.1\n")
    (w / "wrong-type.toml").write_text('student_lr = "fast"\n')
    (w / "malformed.toml").write_text("timesteps = \n")
    (w / "broken.toml").write_text("name = [\n")
    profile = Path(__file__).parents[1] / "hw_targets" / "profiles" / "loihi.toml"
    (w / "misspelt.toml").write_text(profile.read_text().replace("[energy.spike]", "[energy.spikes]"))
    for name, text in (("run-corrupt-config", "{not json"), ("run-list-config", "[1, 2]")):
        (w / name).mkdir()
        (w / name / "config.json").write_text(text)
    return w


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (hidden ones too) with its size."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else [])
        for c in CASES
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(case: Case, world: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for name in case.make:
        (out / name).mkdir() if name.endswith("/") else (out / name).write_bytes(b"")
    before_world, before_out = tree(world), tree(out)
    argv = case.argv.format(w=world, out=out).split(" ")

    code, stdout, stderr = run_cli(capsys, *argv)

    lines = stderr.strip().splitlines()
    assert code == case.code, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert case.fragment in lines[0]
    assert lines[0].startswith("lasnn-deploy")
    assert "Traceback" not in stderr + stdout
    assert tree(world) == before_world, "a failed command changed or added files next to its inputs"
    assert tree(out) == before_out, "a failed command left an output or temporary file"


def test_the_table_covers_every_command_that_reads_input_and_its_ids_are_unique():
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {c.argv.split()[0] for c in CASES} == set(subcommands) - {"demo"}  # demo reads nothing of the user's


# -- API-level refusals -------------------------------
def test_lava_check_refuses_nan_weights():
    from lasnn_deploy.exporters.lava import LavaTarget

    student = digits_student()
    with torch.no_grad():
        student.body[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="NaN"):
        LavaTarget().check(student)


# -- the installed entry point -------------------------------------------------------------------
def test_entry_point_prints_one_line_and_debug_shows_the_traceback(tmp_path):
    exe = Path(sys.executable).with_name("lasnn-deploy")
    argv = [str(exe), "export", str(tmp_path / "nothing"), "--target", "onnx"]
    plain, debug = (
        subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for a in (argv, [argv[0], "--debug", *argv[1:]])
    )
    _, plain_err = plain.communicate(timeout=300)
    _, debug_err = debug.communicate(timeout=300)
    assert plain.returncode == 2
    assert plain_err.strip().splitlines() == [plain_err.strip()] and "no student at" in plain_err
    assert "Traceback" not in plain_err
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug_err
    assert "lasnn_deploy.errors.UserError: no student at" in debug_err
