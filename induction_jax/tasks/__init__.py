"""Training tasks: one protocol (`base.Task`), one file per family. See base.py, and
docs/architecture.md for how to add one."""

from induction_jax.tasks.base import Batch, MemberParam, Metric, Task, classes, from_dict, names, register, task_class
from induction_jax.tasks.repeated import Repeated

__all__ = ["Batch", "MemberParam", "Metric", "Task", "Repeated", "classes", "from_dict", "names", "register",
           "task_class"]
