"""Teacher ANNs and student SNN architectures, each looked up by name."""

from .students import STUDENTS, build_student, plan_layers
from .teachers import TEACHERS, build_teacher

__all__ = ["STUDENTS", "TEACHERS", "build_student", "build_teacher", "plan_layers"]
