"""Git repositories served over smart HTTP on loopback, for a real source-controller.

Flux's GitRepository accepts only ``http``, ``https`` and ``ssh`` URLs (its CRD
refuses ``git://``), and go-git speaks the smart HTTP protocol, so
:class:`GitHttpServer` runs Git's own CGI program, ``git http-backend``
(git-http-backend(1)), behind a small threaded HTTP server on 127.0.0.1.
Repositories are directories below :attr:`GitHttpServer.root`; each is cloned
as ``<url>/<name>``. Only fetches are served (``git-upload-pack``): tests
commit into the working repositories directly (:func:`jaas.testing.flux.make_git_repo`).
"""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
import urllib.parse
from pathlib import Path
from typing import ClassVar, Self

from jaas.testing.processes import Stoppable

#: Seconds one ``git http-backend`` run may take before it is killed.
BACKEND_TIMEOUT = 60.0
#: The request body a fetch negotiation may send (bytes).
MAX_REQUEST_BYTES = 16 * 2**20


class _BackendHandler(http.server.BaseHTTPRequestHandler):
    """Runs ``git http-backend`` for each request, as a CGI web server would (RFC 3875)."""

    protocol_version = "HTTP/1.1"
    root: ClassVar[Path]
    server_version = "jaas-py-git/1"

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet: requests are not logged."""

    def _cgi(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            self.send_error(413)
            return
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "REMOTE_ADDR": self.client_address[0],
        }
        for header in ("Content-Encoding", "Git-Protocol"):
            value = self.headers.get(header)
            if value:
                env["HTTP_" + header.upper().replace("-", "_")] = value
        try:
            result = subprocess.run(
                ["git", "http-backend"],
                input=body,
                env=env,
                capture_output=True,
                timeout=BACKEND_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.send_error(504, "git http-backend timed out")
            return
        head, sep, payload = result.stdout.partition(b"\r\n\r\n")
        if not sep:
            head, sep, payload = result.stdout.partition(b"\n\n")
        if not sep:
            self.send_error(502, f"git http-backend: {result.stderr.decode(errors='replace')}")
            return
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class GitHttpServer(Stoppable):
    """``git http-backend`` behind a threaded HTTP server on a free 127.0.0.1 port.

    Use ``with GitHttpServer(root) as git:`` or :meth:`start` / :meth:`stop`.

    Args:
        root: directory holding the repositories (created if missing); a
            repository is a subdirectory with a ``.git`` directory, or a bare one.
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        handler = type("_Handler", (_BackendHandler,), {"root": self.root})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def repository_path(self, name: str) -> Path:
        """The working directory of repository ``name`` (commit into it with ``make_git_repo``)."""
        return self.root / name

    def url(self, name: str) -> str:
        """The clone URL of repository ``name``: ``<base_url>/<name>``."""
        return f"{self.base_url}/{urllib.parse.quote(name)}"

    def start(self) -> GitHttpServer:
        """Serve in a background thread; return self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever, name="git-http-backend", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self
