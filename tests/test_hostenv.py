"""The huge-page restart of the command-line entry points (jaxlava/hostenv.py)."""
import os
import platform
import subprocess
import sys
import textwrap

from jaxlava import hostenv

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_useful_only_when_it_would_change_something():
    assert hostenv.hugepages_useful({}, "always [madvise] never") == (
        sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc")
    assert not hostenv.hugepages_useful({}, "always madvise [never]")
    assert not hostenv.hugepages_useful({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "[always] madvise never")
    assert not hostenv.hugepages_useful({"JAXLAVA_HUGEPAGES": "0"}, "[always] madvise never")


def test_with_tunable_keeps_other_tunables():
    assert hostenv.with_tunable({})["GLIBC_TUNABLES"] == hostenv.TUNABLE
    env = hostenv.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "X": "1"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + hostenv.TUNABLE, "X": "1"}


def _run(tmp_path, **env_extra):
    script = tmp_path / "cli.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {ROOT!r})
        print("start", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:], flush=True)
        from jaxlava.hostenv import reexec_with_hugepages
        reexec_with_hugepages()
        print("run", os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXLAVA_HUGEPAGES")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-u", str(script), "--flag", "a b"], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    return out


def test_cli_restarts_once_with_the_same_arguments(tmp_path):
    if not hostenv.hugepages_useful({}):
        import pytest
        pytest.skip("no glibc or transparent huge pages on this host: nothing to restart for")
    out = _run(tmp_path, GLIBC_TUNABLES="glibc.malloc.arena_max=4")
    assert out == ["start glibc.malloc.arena_max=4 ['--flag', 'a b']",
                   f"start glibc.malloc.arena_max=4:{hostenv.TUNABLE} ['--flag', 'a b']",
                   f"run glibc.malloc.arena_max=4:{hostenv.TUNABLE} ['--flag', 'a b']"]


def test_cli_restart_can_be_turned_off(tmp_path):
    assert _run(tmp_path, JAXLAVA_HUGEPAGES="0") == ["start  ['--flag', 'a b']", "run  ['--flag', 'a b']"]
