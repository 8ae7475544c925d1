"""Download a Flux source artifact over HTTP, verify its sha256 digest, extract it.

Behaviour follows metio/jaas ``internal/sources/sources.go`` (``Fetch``,
``downloadToTemp``, ``verifyExpectedDigest``, ``isPermanentHTTPStatus``):

- at most ``max_concurrent_downloads`` (4) downloads at once per fetcher;
- environment proxies are ignored (``trust_env=False``); up to 10 redirects;
  a 300 s total timeout and 30 s connect timeout per attempt;
- the body is streamed with a running sha256 and a 64 MiB cap;
- only ``sha256:`` digests; mismatch, malformed digest, a body over the cap
  and any 4xx except 408/429 are permanent ``SourceFetchFailed``; 5xx, 408,
  429, timeouts and network errors are transient, retried ``attempts`` times
  with a short exponential backoff, then raised as transient;
- an empty digest skips verification (and the cache, which is keyed by it).

Past JaaS: with an :class:`~jaas.sources.cache.ArtifactCache` and a digest,
downloads go through :meth:`~jaas.sources.cache.ArtifactCache.get_or_fetch`,
so N concurrent fetches of one artifact, in one process or across the pod's
processes, cause one download.

JaaS's SSRF guard (urlguard, jaas-reference §6.8) is not applied yet: tests
and the demo serve artifacts on loopback. Every URL, the first and each
redirect target, passes through :meth:`ArtifactFetcher.check_url`; the guard
belongs there (plus a resolver hook for the DNS-rebinding check).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Mapping
from typing import Final

import aiohttp
from yarl import URL

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import format_digest, parse_digest
from jaas.sources.extract import ArchiveError, extract_tarball

MiB: Final = 1 << 20
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 64 * MiB
DEFAULT_TIMEOUT_SECONDS: Final = 300.0
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_ATTEMPTS: Final = 3
DEFAULT_RETRY_BACKOFF_SECONDS: Final = 0.5
MAX_REDIRECTS: Final = 10
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK: Final = 256 * 1024


def is_permanent_http_status(status: int) -> bool:
    """Whether an artifact response status will not heal by retrying.

    Every 4xx except 408 (Request Timeout) and 429 (Too Many Requests), as
    JaaS ``isPermanentHTTPStatus``; 5xx and the rest are transient.
    """
    return 400 <= status < 500 and status not in (408, 429)


class ArtifactFetcher:
    """Downloads and verifies Flux artifacts, optionally through the shared cache.

    Args:
        cache: the pod's artifact cache, or None to always download.
        max_concurrent_downloads: downloads in flight at once (JaaS: 4).
        max_download_bytes: cap on the compressed body (JaaS: 64 MiB).
        timeout: seconds for one attempt, connect to last byte (JaaS: 300).
        connect_timeout: seconds to connect (JaaS: 30).
        attempts: tries for a transient failure before giving up (>= 1).
        retry_backoff: seconds before the second try; doubles after each
            try, with jitter (each wait is 50–100 % of the nominal value).

    Counters (plain ints): ``requests`` (HTTP requests sent, redirects
    included) and ``downloads`` (bodies received and verified).
    The aiohttp session is created on first use inside the running loop;
    call :meth:`close` when done.
    """

    def __init__(
        self,
        cache: ArtifactCache | None,
        *,
        max_concurrent_downloads: int = 4,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF_SECONDS,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.cache = cache
        self.max_download_bytes = max_download_bytes
        self.attempts = attempts
        self.retry_backoff = retry_backoff
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._semaphore = asyncio.Semaphore(max_concurrent_downloads)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.downloads = 0

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                trust_env=False,
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session (a later fetch opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: str | URL) -> URL:
        """Validate an artifact URL (the first and every redirect target) and parse it.

        Today: scheme http or https and a host. JaaS's SSRF denylist
        (loopback, link-local, metadata addresses) goes here when added.

        Raises:
            ReasonError: ``SourceFetchFailed``, not transient.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except ValueError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED, f"artifact URL {str(url)!r} cannot be parsed: {err}"
            ) from err
        if parsed.scheme not in ("http", "https"):
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"artifact URL {str(url)!r} must use http or https",
            )
        if not parsed.host:
            raise ReasonError(Reason.SOURCE_FETCH_FAILED, f"artifact URL {str(url)!r} has no host")
        return parsed

    async def fetch(
        self, url: str, digest: str | None, *, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """Return the artifact's tarball bytes, verified against ``digest`` when one is given.

        Args:
            url: ``status.artifact.url`` of the Flux source.
            digest: ``status.artifact.digest`` (``sha256:<hex>``); None or
                empty skips verification and caching.
            headers: extra request headers, e.g. ``traceparent``.

        Raises:
            ReasonError: ``SourceFetchFailed``; ``transient`` tells whether a
                retry with backoff may help (see the module docstring).
        """
        expected = parse_digest(digest)
        target = self.check_url(url)
        if self.cache is not None and expected is not None:

            async def load() -> bytes:
                return await self._download(target, expected, headers)

            return await self.cache.get_or_fetch(expected, load)
        return await self._download(target, expected, headers)

    async def fetch_files(
        self,
        url: str,
        digest: str | None,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, bytes]:
        """Fetch the artifact and extract it (in a thread) with the JaaS caps and name rules.

        ``path`` is ``sourceRef.path`` (see
        :func:`jaas.sources.extract.extract_tarball`). A corrupt archive is a
        permanent failure when the digest was verified (the same bytes would
        fail again) and transient when there was no digest to verify.

        Raises:
            ReasonError: ``SourceFetchFailed`` (see :meth:`fetch` and
                :func:`~jaas.sources.extract.extract_tarball`).
        """
        data = await self.fetch(url, digest, headers=headers)
        try:
            return await asyncio.to_thread(extract_tarball, data, path=path)
        except ArchiveError as err:
            transient = err.transient or parse_digest(digest) is None
            raise ArchiveError(f"{err.message} (from {url})", transient=transient) from err

    async def _download(
        self, target: URL, expected: str | None, headers: Mapping[str, str] | None
    ) -> bytes:
        delay = self.retry_backoff
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._semaphore:
                    return await self._get(target, expected, headers)
            except ReasonError as err:
                if not err.transient or attempt == self.attempts:
                    raise
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(
        self, target: URL, expected: str | None, headers: Mapping[str, str] | None
    ) -> bytes:
        """One attempt: GET following redirects, stream, cap, hash, verify."""
        session = self._get_session()
        request_headers = {"Accept-Encoding": "identity", **(headers or {})}
        url = target
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.requests += 1
                async with session.get(
                    url, headers=request_headers, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if response.status in _REDIRECT_STATUSES and location:
                        url = self.check_url(_resolve_redirect(url, location))
                        continue
                    if response.status != 200:
                        raise ReasonError(
                            Reason.SOURCE_FETCH_FAILED,
                            f"download {target}: HTTP {response.status}",
                            transient=not is_permanent_http_status(response.status),
                        )
                    data, actual = await self._read_body(target, response)
                    break
            else:
                raise ReasonError(
                    Reason.SOURCE_FETCH_FAILED,
                    f"download {target}: stopped after {MAX_REDIRECTS} redirects",
                    transient=True,
                )
        except TimeoutError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {target}: timed out after {self._timeout.total} s",
                transient=True,
            ) from err
        except aiohttp.ClientError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {target}: {type(err).__name__}: {err}",
                transient=True,
            ) from err
        if expected is not None and actual != expected:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"digest mismatch: expected {format_digest(expected)}, "
                f"got {format_digest(actual)} (from {target})",
            )
        self.downloads += 1
        return data

    async def _read_body(self, target: URL, response: aiohttp.ClientResponse) -> tuple[bytes, str]:
        """The body, streamed under the byte cap with a running sha256; returns (body, hex)."""
        limit = self.max_download_bytes
        too_large = ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"download {target}: artifact is larger than the {limit}-byte download cap",
        )
        if response.content_length is not None and response.content_length > limit:
            raise too_large
        hasher = hashlib.sha256()
        chunks: list[bytes] = []
        received = 0
        async for chunk in response.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > limit:
                raise too_large
            hasher.update(chunk)
            chunks.append(chunk)
        return b"".join(chunks), hasher.hexdigest()


def _resolve_redirect(current: URL, location: str) -> URL:
    """The absolute URL a ``Location`` header points to, relative to ``current``."""
    try:
        return current.join(URL(location))
    except ValueError as err:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"redirect from {current} to an unparsable location {location!r}",
        ) from err
