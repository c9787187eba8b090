"""Prints this machine's pip settings (find-links, package indexes, constraints) as uv's flags, for `make install`.

uv installs the same packages as pip in a fraction of the time, but it reads neither pip's configuration files nor
its PIP_* variables; without them it would miss wheels that lie on this disk (the CPU build of torch) and the
machine's constraints. Run with the virtual environment's python, whose pip reports the settings in effect."""

from __future__ import annotations

import shlex
import subprocess
import sys

# pip's setting -> uv's flag (both take several values, space-separated in pip's config).
FLAGS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
         "constraint": "--constraint"}


def uv_args(pip_config_list: str) -> list[str]:
    """uv's flags for the lines of ``pip config list`` (``scope.key='value'``), each value once."""
    args: list[str] = []
    for line in pip_config_list.splitlines():
        key, sep, quoted = line.partition("=")
        flag = FLAGS.get(key.rsplit(".", 1)[-1])
        if not sep or flag is None:
            continue
        for value in " ".join(shlex.split(quoted)).split():
            pair = [flag, value]
            if not any(args[i:i + 2] == pair for i in range(0, len(args), 2)):
                args += pair
    return args


if __name__ == "__main__":
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    print(shlex.join(uv_args(listed)))
