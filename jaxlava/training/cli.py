"""Shared CLI plumbing for the trainers: tyro parsing plus jaxlava's flag conventions.

- `--mesh` alone means "all devices on fsdp"; `--mesh SPEC` as given; no `--mesh`: one device.
- `--set key=value` overrides any config field (dotted for nested ones), the same as tyro's `--key value`.
"""
from __future__ import annotations

import sys
from typing import TypeVar

import tyro

T = TypeVar("T")


def normalize_argv(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--mesh" and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            out += ["--mesh", "all"]
        elif a == "--set":
            if i + 1 == len(argv) or "=" not in argv[i + 1]:
                raise SystemExit("--set expects key=value, e.g. --set optim.lr=1e-4")
            key, value = argv[i + 1].split("=", 1)
            out += [f"--{key.replace('_', '-')}", value]
            i += 1
        elif a.startswith("--set="):
            key, value = a[len("--set="):].split("=", 1)
            out += [f"--{key.replace('_', '-')}", value]
        else:
            out.append(a)
        i += 1
    return out


def parse(cls: type[T], argv: list[str] | None = None, description: str | None = None, default: T | None = None) -> T:
    argv = sys.argv[1:] if argv is None else argv
    return tyro.cli(cls, args=normalize_argv(argv), description=description, default=default)


def preset_default(argv: list[str], presets: dict, flag: str = "--preset", fallback: str = "shapes"):
    """The default config of the preset that `flag NAME` (or `flag=NAME`) names in `argv` (`fallback` without it);
    the other flags then override its fields."""
    name = fallback
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            name = argv[i + 1]
        elif a.startswith(flag + "="):
            name = a.split("=", 1)[1]
    if name not in presets:
        raise SystemExit(f"unknown {flag} {name!r}; choose from {', '.join(presets)}")
    return presets[name]
