"""induction-jax: train ensembles of small transformers and read the induction circuit out of them.

    import induction_jax as ij
    ij.use_cpu_cores()                      # on a CPU, before any JAX work: every core a device
    run = ij.train(ij.RunConfig().replace(seeds=4, steps=600), "runs/demo")
    run.metrics()                           # pandas DataFrame, one row per (member, step)
    run.analyze(); run.phase()              # circuits and phase-change timing, as dicts
    run.params(step=300)["W_Q"]             # [members, layers, heads, d_model, d_head]
    run.export(member=0, format="transformer-lens", out="tl/")

Importing the package has no side effects: it imports no JAX and sets nothing. The names
below are loaded on first use.
"""

import os as _os
import warnings as _warnings

__version__ = "0.2.0"

__all__ = ["use_cpu_cores", "train", "sweep", "open_run", "Run", "analyze_weights",
           "from_transformer_lens", "RunConfig", "Members"]


def use_cpu_cores(n: int | None = None) -> int:
    """Expose `n` CPU cores as JAX CPU devices (default: $INDUCTION_JAX_CPU_DEVICES, else all
    cores), so an ensemble is sharded over them; the command line does this first.

    It can apply only before JAX starts its backends (the first computation or device query,
    not `import jax`): called later it changes nothing, warns, and returns the number of CPU
    devices JAX already has. `XLA_FLAGS=--xla_force_host_platform_device_count=N`, if set,
    wins. Affects only the CPU platform. Returns the device count in effect.
    """
    import jax

    n = n or int(_os.environ.get("INDUCTION_JAX_CPU_DEVICES", _os.cpu_count() or 1))
    if "xla_force_host_platform_device_count" in _os.environ.get("XLA_FLAGS", ""):
        return int(_os.environ["XLA_FLAGS"].split("xla_force_host_platform_device_count=")[1].split()[0])
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        have = len(jax.devices("cpu"))
        if have != n:
            _warnings.warn(f"induction_jax.use_cpu_cores({n}): JAX has already started with {have} CPU "
                           f"device(s) and keeps them; call it before any JAX computation (restart the "
                           f"kernel in a notebook)", stacklevel=2)
        return have
    return n


def __getattr__(name: str):
    if name in ("train", "sweep", "open_run", "Run", "analyze_weights", "from_transformer_lens"):
        from induction_jax import api
        return getattr(api, name)
    if name == "RunConfig":
        from induction_jax.config import RunConfig
        return RunConfig
    if name == "Members":
        from induction_jax.members import Members
        return Members
    raise AttributeError(f"module 'induction_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (loaded or not, so a notebook's tab completion shows it) and the module's
    dunder names; submodules already imported are left out, as are private names."""
    return sorted(set(__all__) | {n for n in globals() if n.startswith("__") and n.endswith("__")})
