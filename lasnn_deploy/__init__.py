"""lasnn-deploy: LaSNN training, NIR / ONNX / Lava export, validation and energy reports.

The Python API follows the data flow train -> student -> export -> validate / energy::

    from lasnn_deploy import train, load_student, load_split, first_samples, export, validate, energy_report, tradeoff
    run = train(dataset="mnist", data_dir="../shared/data", preset="quick", out="runs/mnist")
    student = load_student(run)
    images, labels = first_samples(load_split("mnist", "../shared/data", "test"), 256)
    validate(student, export(student, "onnx", run / "student.onnx"), images, labels)
    energy_report(student, images, labels, hw="all", out_dir=run / "energy")
    tradeoff([run], images, labels, timesteps="2,4,8", out_dir=run / "tradeoff")  # accuracy-energy-latency
"""

__version__ = "0.1.0"

from .data import first_samples, load_split  # noqa: E402
from .errors import UserError  # noqa: E402
from .evaluation import evaluate_student  # noqa: E402
from .exporters import export  # noqa: E402
from .hw_targets.report import energy_report  # noqa: E402
from .hw_targets.tradeoff import tradeoff  # noqa: E402
from .nir_import import import_nir  # noqa: E402
from .student import SpikingStudent, StudentConfig, load_student, save_student  # noqa: E402
from .training import make_config, train  # noqa: E402
from .validation import validate  # noqa: E402

__all__ = [
    "UserError",
    "first_samples",
    "load_split",
    "SpikingStudent",
    "StudentConfig",
    "load_student",
    "save_student",
    "make_config",
    "train",
    "evaluate_student",
    "export",
    "import_nir",
    "validate",
    "energy_report",
    "tradeoff",
    "__version__",
]
