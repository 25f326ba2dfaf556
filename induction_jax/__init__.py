"""induction-jax: train ensembles of small transformers and read the induction circuit out of them."""

import os as _os

__version__ = "0.2.0"

# On a CPU, expose every core as a JAX device so the ensemble axis can be sharded across them
# (one small model keeps only one core busy). This must happen before JAX starts its backends;
# it affects only the CPU platform. INDUCTION_JAX_CPU_DEVICES overrides the count (1 = off).
if "xla_force_host_platform_device_count" not in _os.environ.get("XLA_FLAGS", ""):
    _n = int(_os.environ.get("INDUCTION_JAX_CPU_DEVICES", _os.cpu_count() or 1))
    if _n > 1:
        _os.environ["XLA_FLAGS"] = (_os.environ.get("XLA_FLAGS", "") +
                                    f" --xla_force_host_platform_device_count={_n}").strip()
