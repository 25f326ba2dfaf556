"""Training tasks: one protocol (`base.Task`), one file per family. See base.py, and
docs/architecture.md for how to add one.

Every module of this package is imported here, so a family is one file: its `@register`
makes it known to `--task`, `config.json` and the API without editing anything else.
Built-in families import JAX inside their methods, so this stays cheap for the parser.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from induction_jax.tasks.base import Batch, MemberParam, Metric, Task, classes, from_dict, names, register, task_class
from induction_jax.tasks.repeated import Repeated

for _module in sorted(m.name for m in _pkgutil.iter_modules(__path__)):
    if _module != "base":
        _importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Batch", "MemberParam", "Metric", "Task", "Repeated", "classes", "from_dict", "names", "register",
           "task_class"]
