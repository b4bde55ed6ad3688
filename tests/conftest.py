"""Test environment: 8 fake CPU devices (unless XLA_FLAGS names a count), the suite's compile level
(cli_fixtures.FAST_COMPILE), no hub access, grain workers usable."""
import os
import re

from cli_fixtures import xla_flags

_count = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
os.environ["XLA_FLAGS"] = xla_flags(int(_count.group(1)) if _count else 8, os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # one persistent compilation cache for the session: the test process and every script it starts load a program
    # that was compiled before instead of compiling it again (most of a small run's time is compilation); a loaded
    # program gives the same numbers, and `compiles` in run metrics counts loads too (jaxlava/training/metrics.py)
    import atexit
    import shutil
    import tempfile
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlava-test-jit-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
from jaxlava.hostenv import hugepages_useful, with_tunable  # noqa: E402

if hugepages_useful():  # the CLIs that tests start then need not restart themselves (jaxlava/hostenv.py)
    os.environ.update(with_tunable(os.environ))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first: with `-n 3 --dist loadfile` (make test) the long modules then start at once
    instead of finishing last on one worker while the other idles.  The order within a module is kept."""
    slow = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow)
