"""Switch prometheus_client to multiprocess mode before it is imported.

prometheus_client decides between in-process and multiprocess metric values
at import time, from ``PROMETHEUS_MULTIPROC_DIR``; this module must therefore
not import it. The leader calls ``enable`` first thing; shard workers inherit
the variable.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable(directory: Path) -> None:
    """Use ``directory`` (emptied first) for the metrics of this process and its children.

    Raises:
        RuntimeError: prometheus_client was already imported in this process.
    """
    if "prometheus_client" in sys.modules and os.environ.get(ENV) != str(directory):
        raise RuntimeError("prometheus_client was imported before multiprocess mode was enabled")
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[ENV] = str(directory)
