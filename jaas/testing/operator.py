"""Run ``jaas operator`` as a real child process against a test control plane.

Used by the end-to-end tests, the load tests and ``make demo``: it picks free
loopback ports, points storage and cache at a work directory, waits for
``/ready`` and offers the operator's HTTP endpoints (``/shards``, ``/metrics``)
to the caller.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaas.child import python_module_argv
from jaas.testing.processes import free_port, log_tail


class OperatorError(RuntimeError):
    """The operator process did not start or stopped unexpectedly."""


class OperatorProcess:
    """One ``jaas operator`` process tree (leader, shards, evaluators).

    ``extra_args`` are appended to the command line (e.g. ``["--log-level", "debug"]``),
    ``env`` added to the environment; ``cwd`` is its working directory (default:
    this process's).
    Output goes to ``<workdir>/operator.log``.
    """

    def __init__(
        self,
        kubeconfig: Path,
        workdir: Path,
        *,
        shards: int = 2,
        evaluators: int = 2,
        evaluation_timeout: float = 5.0,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.cwd = cwd
        self.workdir = workdir
        self.shard_count = shards
        self.evaluators = evaluators
        self.evaluation_timeout = evaluation_timeout
        self.extra_args = list(extra_args)
        #: Extra environment variables (e.g. ``JAAS_EXT_VAR_<KEY>``) on top of ours.
        self.env = dict(env or {})
        self.storage_port = free_port()
        self.management_port = free_port()
        self.metrics_port = free_port()
        self.storage_path = workdir / "artifacts"
        self.cache_path = workdir / "cache"
        self.log_path = workdir / "operator.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """``--storage-base-url``: where artifacts are served."""
        return f"http://127.0.0.1:{self.storage_port}"

    @property
    def argv(self) -> list[str]:
        """The operator's command line."""
        return python_module_argv(
            "jaas",
            "operator",
            "--kubeconfig",
            str(self.kubeconfig),
            "--storage-path",
            str(self.storage_path),
            "--storage-base-url",
            self.base_url,
            "--storage-listen-address",
            "127.0.0.1",
            "--storage-port",
            str(self.storage_port),
            "--management-port",
            str(self.management_port),
            "--metrics-bind-address",
            f"127.0.0.1:{self.metrics_port}",
            "--cache-path",
            str(self.cache_path),
            "--shards",
            str(self.shard_count),
            "--evaluators",
            str(self.evaluators),
            "--evaluation-timeout",
            f"{self.evaluation_timeout:g}s",
            *self.extra_args,
        )

    def launch(self) -> subprocess.Popen[bytes]:
        """Start the operator process in its own session without waiting for it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.env},
            cwd=self.cwd,
        )
        log.close()
        return self.process

    def start(self, timeout: float = 60.0) -> OperatorProcess:
        """Start the operator and wait until ``/ready`` answers 200.

        Raises:
            OperatorError: it exited or did not become ready in time (the
                message holds the tail of its log).
        """
        self.launch()
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise OperatorError(f"jaas operator exited with {code}:\n{log_tail(self.log_path)}")
            if self.status("/ready") == 200:
                return self
            time.sleep(0.2)
        self.stop()
        raise OperatorError(f"jaas operator not ready after {timeout}s:\n{log_tail(self.log_path)}")

    def status(self, path: str) -> int:
        """HTTP status of ``GET <management>/<path>`` (0 when unreachable)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.management_port}{path}", timeout=2
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return err.code
        except OSError:
            return 0

    def shards(self) -> list[dict[str, Any]]:
        """``/shards``: name, pid, ready and restarts of every shard process."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.management_port}/shards", timeout=5
        ) as resp:
            doc: list[dict[str, Any]] = json.loads(resp.read())
            return doc

    def metrics(self) -> str:
        """The Prometheus exposition of ``/metrics``."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
        ) as resp:
            return str(resp.read().decode())

    def pids(self) -> list[int]:
        """PIDs of the whole process tree (the leader's session)."""
        if self.process is None:
            return []
        out = subprocess.run(
            ["ps", "-o", "pid=", "-s", str(self.process.pid)], capture_output=True, text=True
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the leader, wait ``grace`` seconds, SIGKILL the session; return the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the session
        self.process = None
        return proc.returncode

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
