"""lasnn-deploy: LaSNN training, NIR / ONNX / Lava export, validation and energy reports.

The Python API follows the data flow train -> student -> export -> validate / energy::

    from lasnn_deploy import load_student, export, validate
    student = load_student("runs/mnist")
    export(student, "onnx", "runs/mnist/student.onnx")
"""

__version__ = "0.1.0"

from .errors import UserError  # noqa: E402
from .student import SpikingStudent, StudentConfig, load_student, save_student  # noqa: E402
from .exporters import export  # noqa: E402
from .validation import validate  # noqa: E402

__all__ = ["UserError", "SpikingStudent", "StudentConfig", "load_student", "save_student", "export", "validate", "__version__"]
