"""Running the project's scripts (train/*.py, data/*.py) in a subprocess from tests."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA:CPU at backend optimisation level 0 instead of XLA's default 3, for the suite and every script it starts: it
# compiles a small model's steps about twice as fast and runs some of them slower; on the whole suite it used less
# CPU time than level 1 (docs/decisions.md 39).  JAXLAVA_TEST_XLA_OPT=1 keeps XLA's default.
FAST_COMPILE = () if os.environ.get("JAXLAVA_TEST_XLA_OPT") == "1" else ("--xla_backend_optimization_level=0",)


def xla_flags(devices: int, flags: str = "") -> str:
    """`flags` with `devices` fake host devices and the suite's compile level (other flags kept)."""
    kept = [f for f in flags.split() if "xla_force_host_platform_device_count" not in f and f not in FAST_COMPILE]
    return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}", *FAST_COMPILE])


def cli_env(devices: int | None = 1) -> dict:
    """Environment for a script run: CPU JAX, the checkout on PYTHONPATH, `devices` fake host devices
    (None: leave XLA_FLAGS as the caller's environment has it).  The session's compilation cache
    (JAX_COMPILATION_CACHE_DIR, set in conftest.py) and XLA flags are inherited."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    if devices is not None:
        env["XLA_FLAGS"] = xla_flags(devices, os.environ.get("XLA_FLAGS", ""))
    return env


# Runs each command's `--help` in one interpreter (a command: "path/to/script.py [args]" or "-m module [args]"), so
# the suite pays for importing JAX and the library once rather than once per command; prints HELP + JSON.
_HELP_SCRIPT = """
import contextlib, io, json, runpy, sys, traceback
out = {}
for command in json.loads(sys.argv[1]):
    words, stdout, stderr, code = command.split(), io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            module = words[0] == "-m"
            sys.argv = [*(words[1:] if module else words), "--help"]
            if module:
                runpy.run_module(words[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(words[0], run_name="__main__")
        except SystemExit as e:
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        except BaseException:
            code = 1
            traceback.print_exc()
    out[command] = {"returncode": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}
print("HELP" + json.dumps(out))
"""


def help_texts(commands, columns: int = 200, timeout: int = 300) -> dict[str, dict]:
    """`--help` of each command, run from the checkout's root in one subprocess: {command: {returncode, stdout,
    stderr}}."""
    import json
    import subprocess
    import sys
    env = dict(cli_env(), COLUMNS=str(columns))  # a wide terminal for the help's layout
    r = subprocess.run([sys.executable, "-c", _HELP_SCRIPT, json.dumps(list(commands))], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    if "HELP" not in r.stdout:
        raise RuntimeError(f"the --help runner failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.rsplit("HELP", 1)[1])
