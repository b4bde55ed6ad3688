"""Running the project's scripts (train/*.py, data/*.py) in a subprocess from tests."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(devices: int | None = 1) -> dict:
    """Environment for a script run: CPU JAX, the checkout on PYTHONPATH, `devices` fake host devices
    (None: leave XLA_FLAGS as the caller's environment has it).  The session's compilation cache
    (JAX_COMPILATION_CACHE_DIR, set in conftest.py) is inherited."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env
