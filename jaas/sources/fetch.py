"""Download a Flux source artifact over HTTP, verify its digest, extract it.

Behaviour follows metio/jaas ``internal/sources/sources.go`` (``Fetch``,
``downloadToTemp``, ``verifyExpectedDigest``, ``isPermanentHTTPStatus``):

- at most ``max_concurrent_downloads`` (4) downloads at once per fetcher;
- environment proxies are ignored (``trust_env=False``); up to 10 redirects;
  a 300 s total timeout per attempt;
- the body is streamed with a running hash in the digest's own algorithm
  and a 64 MiB cap;
- every digest algorithm Flux writes is verified: ``sha256``, and with
  source-controller's ``--artifact-digest-algo`` ``sha384``, ``sha512`` or
  ``blake3`` (:mod:`jaas.sources.digest`; JaaS accepts only ``sha256``);
- a mismatch, a malformed or unsupported digest, a body over the cap
  and any 4xx except 408/429 are permanent ``SourceFetchFailed``; 5xx, 408,
  429, timeouts and network errors are transient, retried ``attempts`` times
  with a short exponential backoff, then raised as transient;
- an empty digest skips verification (and the cache, which is keyed by it).

Past JaaS: download slots are shared fairly between the namespaces that ask
(``jaas.fairqueue.FairSlots``; one namespace holds at most all slots but
one), and a slow server is cut off early: a connect timeout, a first-byte
timeout (request to response headers), an idle timeout between reads and a
minimum average transfer rate once the body has had a grace period, each a
transient ``SourceFetchFailed`` naming the flag that bounds it. So a tenant
whose servers trickle ties up only its own slots, and only for seconds.

With an :class:`~jaas.sources.cache.ArtifactCache` and a digest,
downloads go through :meth:`~jaas.sources.cache.ArtifactCache.get_or_fetch`,
so N concurrent fetches of one artifact, in one process or across the pod's
processes, cause one download while it succeeds; a fetch from another URL
with the same digest does not share that download's failure or slowness (it
downloads from its own URL after the cache's ``share_wait``).

SSRF defence (JaaS ``internal/urlguard`` and the dialer ``Control`` hook of
``internal/sources``), see :mod:`jaas.sources.urlguard`: the first URL and
every redirect target pass :meth:`ArtifactFetcher.check_url` (the fetcher's
:class:`~jaas.sources.urlguard.URLGuard`) before a request is sent, and every
address a host name resolves to passes the same guard at connect time
(:class:`GuardedResolver`), so a name that resolves, or rebinds, to loopback or
the metadata endpoint is refused. IP literals never reach the resolver; the
URL check covers them. A refusal is a permanent ``SourceFetchFailed`` and is
not retried. Messages carry URLs without userinfo, query or fragment
(:func:`~jaas.sources.urlguard.redact`).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from opentelemetry import trace
from yarl import URL

from jaas import defaults
from jaas.api.reasons import Reason, ReasonError
from jaas.backoff import Backoff
from jaas.fairqueue import FairSlots
from jaas.observability import metrics, tracing
from jaas.sources.cache import ArtifactCache
from jaas.sources.digest import Digest, Hasher, parse_digest
from jaas.sources.extract import ArchiveError, extract_tarball
from jaas.sources.urlguard import ForbiddenURLError, URLGuard, redact

MAX_REDIRECTS: Final = 10
_REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_CHUNK: Final = 256 * 1024


def is_permanent_http_status(status: int) -> bool:
    """Whether an artifact response status will not heal by retrying.

    Every 4xx except 408 (Request Timeout) and 429 (Too Many Requests), as
    JaaS ``isPermanentHTTPStatus``; 5xx and the rest are transient.
    """
    return 400 <= status < 500 and status not in (408, 429)


class RefusedAddressError(OSError):
    """Every address a host name resolved to is forbidden by the guard.

    Raised by :class:`GuardedResolver`; aiohttp wraps it in
    ``ClientConnectorDNSError`` (as ``os_error``), and the fetcher turns it
    into a permanent :class:`~jaas.sources.urlguard.ForbiddenURLError`.

    Attributes:
        host: the name that was resolved.
        refused: ``(address, why)`` for each address dropped, in resolver order.
    """

    def __init__(self, host: str, refused: list[tuple[str, str]]) -> None:
        described = ", ".join(f"{address} ({why})" for address, why in refused)
        super().__init__(f"host {host!r} resolves only to forbidden addresses: {described}")
        self.host = host
        self.refused = refused


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that drops the addresses the guard refuses (DNS-rebinding defence).

    The connect-time half of JaaS's SSRF defence (``internal/sources``
    ``controlConn``, which runs ``urlguard.ForbiddenIP`` on the address the
    dialer is about to connect to). aiohttp connects only to addresses this
    resolver returns, so a name that resolves, or rebinds between the URL
    check and the connect, to loopback or 169.254.169.254 is never dialled.
    aiohttp does not call the resolver for IP literals; the URL check covers
    those.

    Args:
        guard: decides which addresses may be connected to.
        resolver: does the lookups; None creates aiohttp's
            ``DefaultResolver`` (so this must be built inside the running loop),
            which :meth:`close` closes. A resolver passed in stays the caller's
            and is not closed.
    """

    def __init__(self, guard: URLGuard, resolver: AbstractResolver | None = None) -> None:
        self.guard = guard
        self._owns_resolver = resolver is None
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and keep only the addresses the guard allows.

        Raises:
            RefusedAddressError: the resolver answered, but with forbidden
                addresses only.
            OSError: the lookup itself failed (as the wrapped resolver raises it).
        """
        answers = await self._resolver.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for answer in answers:
            try:
                self.guard.check_address(answer["host"])
            except ForbiddenURLError as err:
                refused.append((answer["host"], err.why))
            else:
                allowed.append(answer)
        if refused and not allowed:
            raise RefusedAddressError(host, refused)
        return allowed

    async def close(self) -> None:
        """Close the wrapped resolver if this one created it."""
        if self._owns_resolver:
            await self._resolver.close()


class ArtifactFetcher:
    """Downloads and verifies Flux artifacts, optionally through the shared cache.

    Args:
        cache: the pod's artifact cache, or None to always download.
        max_concurrent_downloads: downloads in flight at once (JaaS: 4),
            shared fairly between flows (``fetch``'s ``flow``, the tenant
            namespace); one flow holds at most all but one of them.
        max_download_bytes: cap on the compressed body (JaaS: 64 MiB).
        timeout: seconds for one attempt, connect to last byte (JaaS: 300).
        connect_timeout: seconds to connect (JaaS: 30).
        first_byte_timeout: seconds from sending the request to the response
            headers.
        idle_timeout: longest pause between two reads of the body, seconds.
        min_rate: bytes/s the body must average once ``min_rate_grace``
            seconds of it have passed; 0 disables.
        min_rate_grace: seconds of body transfer before ``min_rate`` applies.
        attempts: tries for a transient failure before giving up (>= 1).
        retry_backoff: seconds before the second try; doubles after each
            try, with jitter (each wait is 50–100 % of the nominal value).
        guard: the SSRF check for URLs, redirect targets and resolved
            addresses; None is ``URLGuard()`` (loopback refused). Pass
            ``URLGuard(allow_loopback=True)`` to fetch from 127.0.0.1.
        resolver: does the DNS lookups behind the guard (a test double, or
            aiohttp's ``AsyncResolver``); None is aiohttp's ``DefaultResolver``.
        shard: the shard identity, the ``shard`` label of the fetch stage's
            duration (``jaas_reconcile_stage_duration_seconds``).

    Counters (plain ints): ``requests`` (HTTP requests sent, redirects
    included) and ``downloads`` (bodies received and verified).
    The aiohttp session is created on first use inside the running loop;
    call :meth:`close` when done.
    """

    def __init__(
        self,
        cache: ArtifactCache | None,
        *,
        max_concurrent_downloads: int = defaults.MAX_CONCURRENT_DOWNLOADS,
        max_download_bytes: int = defaults.MAX_DOWNLOAD_BYTES,
        timeout: float = defaults.DOWNLOAD_TIMEOUT,
        connect_timeout: float = defaults.DOWNLOAD_CONNECT_TIMEOUT,
        first_byte_timeout: float = defaults.DOWNLOAD_FIRST_BYTE_TIMEOUT,
        idle_timeout: float = defaults.DOWNLOAD_IDLE_TIMEOUT,
        min_rate: float = defaults.DOWNLOAD_MIN_RATE,
        min_rate_grace: float = defaults.DOWNLOAD_MIN_RATE_GRACE,
        attempts: int = defaults.DOWNLOAD_ATTEMPTS,
        retry_backoff: float = defaults.DOWNLOAD_RETRY_BACKOFF,
        guard: URLGuard | None = None,
        resolver: AbstractResolver | None = None,
        shard: str = "",
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.cache = cache
        self.shard = shard
        self.guard = guard if guard is not None else URLGuard()
        self._resolver = resolver
        self.max_download_bytes = max_download_bytes
        self.attempts = attempts
        self.retry_backoff = retry_backoff
        # 75 % ± 25 % of the nominal delay: retries of many snippets spread apart.
        self._backoff = Backoff(0.75 * retry_backoff, 3600.0, jitter=1 / 3)
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_timeout = idle_timeout
        self.min_rate = min_rate
        self.min_rate_grace = min_rate_grace
        self._timeout = aiohttp.ClientTimeout(
            total=timeout, sock_connect=connect_timeout, sock_read=idle_timeout
        )
        self.slots: FairSlots[str] = FairSlots(max_concurrent_downloads)
        self._session: aiohttp.ClientSession | None = None
        self._guarded_resolver: GuardedResolver | None = None
        self.requests = 0
        self.downloads = 0

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # The connector closes only resolvers it created itself; close() does this one.
            self._guarded_resolver = GuardedResolver(self.guard, self._resolver)
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                trust_env=False,
                auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, resolver=self._guarded_resolver),
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP session and its resolver (a later fetch opens new ones).

        A ``resolver`` passed to the constructor is not closed: it is the
        caller's, and a later fetch uses it again.
        """
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._guarded_resolver is not None:
            await self._guarded_resolver.close()
            self._guarded_resolver = None

    def check_url(self, url: str | URL) -> URL:
        """Validate an artifact URL (the first and every redirect target) and parse it.

        Delegates to the fetcher's :meth:`URLGuard.check
        <jaas.sources.urlguard.URLGuard.check>` (JaaS ``urlguard.ValidateHTTPURL``):
        scheme http or https, a host, and no loopback, link-local, metadata,
        multicast, unspecified or 0.0.0.0/8 address in any spelling.

        Returns:
            The parsed URL, the one to request.

        Raises:
            ForbiddenURLError: ``SourceFetchFailed``, not transient.
        """
        return self.guard.check(url)

    async def fetch(
        self,
        url: str,
        digest: Digest | str | None,
        *,
        headers: Mapping[str, str] | None = None,
        flow: str = "",
    ) -> bytes:
        """Return the artifact's tarball bytes, verified against ``digest`` when one is given.

        Args:
            url: ``status.artifact.url`` of the Flux source.
            digest: the parsed digest, or ``status.artifact.digest`` as Flux
                writes it (``<algorithm>:<hex>``, parsed by
                :func:`~jaas.sources.digest.parse_digest`); None or empty
                skips verification and caching.
            headers: extra request headers, e.g. ``traceparent``.
            flow: whom the download is for (the tenant namespace): download
                slots are shared fairly between flows.

        Raises:
            ForbiddenURLError: the URL, a redirect target or the address its
                host resolves to is refused by the guard (permanent).
            ReasonError: ``SourceFetchFailed``; ``transient`` tells whether a
                retry with backoff may help (see the module docstring). A
                malformed or unsupported digest, raised before any request,
                and a digest mismatch are permanent.
        """
        started = time.perf_counter()
        with tracing.span("source.fetch") as span:
            expected = _as_digest(digest)
            target = self.check_url(url)
            span.set_attribute("url.full", redact(target))
            if expected is not None:
                span.set_attribute("jaas.artifact.digest", str(expected))
            if self.cache is None or expected is None:
                data = await self._download(target, expected, headers, flow)
                span.set_attribute("jaas.cache.hit", False)
            else:
                downloaded = False

                async def load() -> bytes:
                    nonlocal downloaded
                    downloaded = True
                    return await self._download(target, expected, headers, flow)

                data = await self.cache.get_or_fetch(expected, load, origin=str(target))
                metrics.ARTIFACT_CACHE_LOOKUPS.labels("miss" if downloaded else "hit").inc()
                span.set_attribute("jaas.cache.hit", not downloaded)
            span.set_attribute("jaas.artifact.bytes", len(data))
        metrics.STAGE_SECONDS.labels(self.shard, "fetch").observe(time.perf_counter() - started)
        return data

    async def fetch_files(
        self,
        url: str,
        digest: Digest | str | None,
        path: str = "",
        *,
        headers: Mapping[str, str] | None = None,
        flow: str = "",
    ) -> dict[str, bytes]:
        """Fetch the artifact and extract it (in a thread) with the JaaS caps and name rules.

        ``digest`` is as for :meth:`fetch`. ``path`` is ``sourceRef.path`` (see
        :func:`jaas.sources.extract.extract_tarball`). A corrupt archive is a
        permanent failure when the digest was verified (the same bytes would
        fail again) and transient when there was no digest to verify.

        Raises:
            ReasonError: ``SourceFetchFailed`` (see :meth:`fetch` and
                :func:`~jaas.sources.extract.extract_tarball`).
        """
        expected = _as_digest(digest)
        data = await self.fetch(url, expected, headers=headers, flow=flow)
        try:
            return await asyncio.to_thread(extract_tarball, data, path=path)
        except ArchiveError as err:
            transient = err.transient or expected is None
            raise ArchiveError(f"{err.message} (from {redact(url)})", transient=transient) from err

    async def _download(
        self, target: URL, expected: Digest | None, headers: Mapping[str, str] | None, flow: str
    ) -> bytes:
        retries = self._backoff.retries()
        for attempt in range(1, self.attempts + 1):
            try:
                async with self.slots.hold(flow):
                    return await self._get(target, expected, headers)
            except ReasonError as err:
                if not err.transient or attempt == self.attempts:
                    raise
            await asyncio.sleep(retries.next())
        raise AssertionError("unreachable")  # pragma: no cover

    async def _get(
        self, target: URL, expected: Digest | None, headers: Mapping[str, str] | None
    ) -> bytes:
        """One attempt: GET following redirects, stream, cap, hash, verify.

        The body is hashed with ``expected``'s algorithm (not at all without
        one) and compared with it.

        Each redirect target passes :meth:`check_url` before it is requested;
        the resolver refuses forbidden addresses at connect time.

        Raises:
            ForbiddenURLError: a redirect target or a resolved address is
                forbidden (permanent).
            ReasonError: ``SourceFetchFailed`` for the other failures, with
                ``transient`` as the module docstring says.
        """
        with tracing.span(
            "GET", kind=trace.SpanKind.CLIENT, attributes={"http.request.method": "GET"}
        ) as span:
            try:
                data = await self._get_traced(target, expected, headers, span)
            except ReasonError:
                metrics.SOURCE_DOWNLOADS.labels("failed").inc()
                raise
            metrics.SOURCE_DOWNLOADS.labels("ok").inc()
            metrics.SOURCE_DOWNLOAD_BYTES.inc(len(data))
            return data

    async def _get_traced(
        self,
        target: URL,
        expected: Digest | None,
        headers: Mapping[str, str] | None,
        span: trace.Span,
    ) -> bytes:
        session = self._get_session()
        # The download's own span is the parent the artifact server sees.
        request_headers = {
            "Accept-Encoding": "identity",
            **(headers or {}),
            **tracing.http_headers(),
        }
        url = target
        shown = redact(target)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                self.requests += 1
                response = await self._response_headers(
                    session.get(url, headers=request_headers, allow_redirects=False), shown
                )
                async with response:
                    span.set_attribute("url.full", redact(url))
                    span.set_attribute("http.response.status_code", response.status)
                    location = response.headers.get("Location")
                    if response.status in _REDIRECT_STATUSES and location:
                        url = self.check_url(_resolve_redirect(url, location))
                        continue
                    if response.status != 200:
                        raise ReasonError(
                            Reason.SOURCE_FETCH_FAILED,
                            f"download {shown}: HTTP {response.status}",
                            transient=not is_permanent_http_status(response.status),
                        )
                    data, actual = await self._read_body(target, response, expected)
                    break
            else:
                raise ReasonError(
                    Reason.SOURCE_FETCH_FAILED,
                    f"download {shown}: stopped after {MAX_REDIRECTS} redirects",
                    transient=True,
                )
        except aiohttp.ConnectionTimeoutError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {shown}: no connection within {self.connect_timeout:g} s "
                "(--download-connect-timeout)",
                transient=True,
            ) from err
        except aiohttp.SocketTimeoutError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {shown}: no data for {self.idle_timeout:g} s (--download-idle-timeout)",
                transient=True,
            ) from err
        except TimeoutError as err:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {shown}: timed out after {self._timeout.total:g} s",
                transient=True,
            ) from err
        except aiohttp.ClientError as err:
            refused = _refused_address(err)
            if refused is not None:
                raise ForbiddenURLError(
                    f"download {shown}: {refused}", host=refused.host, why=refused.refused[0][1]
                ) from err
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {shown}: {type(err).__name__}: {_scrub(str(err), target, url)}",
                transient=True,
            ) from err
        if expected is not None and actual != expected:
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"digest mismatch: expected {expected}, got {actual} (from {shown})",
            )
        self.downloads += 1
        return data

    async def _read_body(
        self, target: URL, response: aiohttp.ClientResponse, expected: Digest | None
    ) -> tuple[bytes, Digest | None]:
        """The body, streamed under the byte cap and hashed chunk by chunk.

        Returns:
            ``(body, digest)``: the digest of the body in ``expected``'s
            algorithm, or None when there is no ``expected`` (nothing hashed).
        """
        limit = self.max_download_bytes
        too_large = ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"download {redact(target)}: artifact is larger than the {limit}-byte download cap",
        )
        if response.content_length is not None and response.content_length > limit:
            raise too_large
        hasher: Hasher | None = expected.hasher() if expected is not None else None
        chunks: list[bytes] = []
        received = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        async for chunk in response.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > limit:
                raise too_large
            if hasher is not None:
                hasher.update(chunk)
            chunks.append(chunk)
            elapsed = loop.time() - started
            slow = received < self.min_rate * elapsed
            if self.min_rate and elapsed > self.min_rate_grace and slow:
                raise ReasonError(
                    Reason.SOURCE_FETCH_FAILED,
                    f"download {redact(target)}: {received} bytes in {elapsed:.1f} s, below the "
                    f"minimum rate of {self.min_rate:g} bytes/s (--download-min-rate)",
                    transient=True,
                )
        body = b"".join(chunks)
        if expected is None or hasher is None:
            return body, None
        return body, Digest(expected.algorithm, hasher.hexdigest())

    async def _response_headers(
        self, request: Awaitable[aiohttp.ClientResponse], shown: str
    ) -> aiohttp.ClientResponse:
        """Await ``request`` (a ``session.get``) up to its headers, within the first-byte timeout.

        Raises:
            ReasonError: transient ``SourceFetchFailed`` when no headers came in
                time (from either bound on that wait: ours or aiohttp's idle read).
            aiohttp.ConnectionTimeoutError: the connect timeout, for ``_get``.
        """
        deadline = asyncio.timeout(self.first_byte_timeout)
        try:
            async with deadline:
                return await request
        except aiohttp.ConnectionTimeoutError:
            raise
        except TimeoutError as err:
            if not deadline.expired() and not isinstance(err, aiohttp.SocketTimeoutError):
                raise  # the attempt's total timeout
            raise ReasonError(
                Reason.SOURCE_FETCH_FAILED,
                f"download {shown}: no response within {self.first_byte_timeout:g} s "
                "(--download-first-byte-timeout)",
                transient=True,
            ) from err


def _as_digest(digest: Digest | str | None) -> Digest | None:
    """``digest`` parsed (see :func:`~jaas.sources.digest.parse_digest`) unless it already is.

    Raises:
        ReasonError: permanent ``SourceFetchFailed`` for a malformed or
            unsupported digest text.
    """
    return digest if isinstance(digest, Digest) else parse_digest(digest)


def _resolve_redirect(current: URL, location: str) -> URL:
    """The absolute URL a ``Location`` header points to, relative to ``current``."""
    try:
        return current.join(URL(location))
    except ValueError as err:
        raise ReasonError(
            Reason.SOURCE_FETCH_FAILED,
            f"redirect from {redact(current)} to an unparsable location {redact(location)!r}",
        ) from err


def _refused_address(err: aiohttp.ClientError) -> RefusedAddressError | None:
    """The guard's refusal inside an aiohttp connect error, if that is what it is."""
    if isinstance(err, aiohttp.ClientConnectorError) and isinstance(
        err.os_error, RefusedAddressError
    ):
        return err.os_error
    if isinstance(err.__cause__, RefusedAddressError):
        return err.__cause__
    return None


def _scrub(text: str, *urls: URL) -> str:
    """``text`` (an aiohttp error message) with each of ``urls`` replaced by its redacted form."""
    for url in urls:
        for spelling in {str(url), url.human_repr()}:
            text = text.replace(spelling, redact(url))
    return text
