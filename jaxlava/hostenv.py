"""Host memory for CPU runs: back glibc malloc with transparent huge pages.

XLA:CPU allocates its temporaries afresh at every execution of a compiled step.  glibc serves large blocks
with `mmap` and unmaps them on free, so each step faults every page of its working set back in: about 1.1
million 4 KiB faults per SFT step of the 146M model (4.4 GiB).  With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
(glibc >= 2.35) malloc asks for transparent huge pages (`madvise`), the faults fall to about 9 thousand, and the
shapes SFT step takes 0.40 s instead of 0.51 s (docs/performance.md, "Profile of the training steps").

A tunable is read when the process starts, so a CLI that finds it unset starts itself again with it set
(`os.execv`, same arguments and environment).  `JAXLAVA_HUGEPAGES=0` turns this off.  Only the command-line
entry points call `reexec_with_hugepages`; importing jaxlava never restarts anything.
"""
from __future__ import annotations

import os
import platform
import sys

TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepages_useful(env=None, thp_setting: str | None = None) -> bool:
    """Whether restarting with the tunable would change anything: Linux with glibc, transparent huge pages not
    `never`, the tunable not already set, and JAXLAVA_HUGEPAGES not 0."""
    env = os.environ if env is None else env
    if env.get("JAXLAVA_HUGEPAGES", "1") == "0" or "glibc.malloc.hugetlb" in env.get("GLIBC_TUNABLES", ""):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if thp_setting is None:
        try:
            with open(THP_SETTING) as f:
                thp_setting = f.read()
        except OSError:
            return False
    return "[never]" not in thp_setting


def with_tunable(env) -> dict:
    """A copy of env with the huge-page tunable added to GLIBC_TUNABLES (other tunables kept)."""
    out = dict(env)
    out["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), TUNABLE) if t)
    return out


def reexec_with_hugepages() -> None:
    """Start this script again under the huge-page tunable when that would help (see the module docstring).
    Call it first thing in a CLI's `if __name__ == "__main__":` block; it returns when nothing is to be done."""
    if not hugepages_useful():
        return
    os.environ.update(with_tunable(os.environ))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
