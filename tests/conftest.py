"""Test environment: 8 fake CPU devices, no hub access, grain workers usable."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
if "--xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from jaxlava.hostenv import hugepages_useful, with_tunable  # noqa: E402

if hugepages_useful():  # the CLIs that tests start then need not restart themselves (jaxlava/hostenv.py)
    os.environ.update(with_tunable(os.environ))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
