"""The command line that starts a Python child process of jaas-py (shards, evaluators).

Children run ``python -P -m <module>``: ``-P`` (Python 3.11, "safe path")
keeps the working directory off ``sys.path``, so an operator started from a
directory that holds a folder named ``jaas`` (its storage directory, say)
still imports its own package in every child instead of crash-looping on
``ImportError``.
"""

from __future__ import annotations

import sys


def python_module_argv(module: str, *args: str) -> list[str]:
    """``[python, "-P", "-m", module, *args]`` with this process's interpreter."""
    return [sys.executable, "-P", "-m", module, *args]
