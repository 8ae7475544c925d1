"""SSRF defence for the artifact URLs the operator follows on a tenant's behalf.

Follows metio/jaas ``internal/urlguard/urlguard.go``: an artifact URL must be
http or https with a host, and the host must not name loopback, link-local
(which holds the cloud metadata endpoint 169.254.169.254), multicast, the
unspecified address, anything in 0.0.0.0/8 (Linux connects 0.0.0.x to
loopback), or ``localhost``. Private ranges (RFC 1918, CGNAT 100.64/10, IPv6
ULA fc00::/7) stay allowed: source-controller is reached in-cluster on them,
and who may reach which private service is NetworkPolicy's business.

The host is judged in every spelling a resolver would accept: inet_aton(3)
forms of IPv4 (1–4 parts, each decimal, ``0x`` hex or leading-``0`` octal),
trailing dots, percent-encoding, and IPv6 literals whose embedded IPv4
address (IPv4-mapped, IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4) is
checked as well. Past JaaS: names under ``.localhost`` (RFC 6761) are
refused, the embedded-IPv4 forms other than IPv4-mapped are unwrapped, a
host that aiohttp would treat as an IP literal but that is no valid address
(``1.2.3.4.5``) is refused, and ``0o``/``0b``/underscore spellings (which Go's
``strconv`` accepts but inet_aton does not) are left to DNS.

This is the string-level half. A DNS name passes it; the address it resolves
to is checked at connect time through :meth:`URLGuard.check_address` (see
:class:`jaas.sources.fetch.GuardedResolver`), as JaaS's dialer ``Control``
hook does with ``ForbiddenIP``.

Error messages name the host and why, never the URL's userinfo, query or
fragment (:func:`redact`): they end up in a tenant-visible status.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Final
from urllib.parse import unquote

from yarl import URL

from jaas.api.reasons import Reason, ReasonError

_THIS_NETWORK: Final = IPv4Network("0.0.0.0/8")
_METADATA: Final = IPv4Address("169.254.169.254")
_IPV4_LINK_LOCAL_MULTICAST: Final = IPv4Network("224.0.0.0/24")
_NAT64: Final = IPv6Network("64:ff9b::/96")
# One inet_aton(3) part, as glibc's strtoul(base 0) reads it after a digit:
# 0x-prefixed hex (at least one digit), leading-0 octal, or decimal.
_IPV4_PART: Final = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_MAX_DECIMAL_DIGITS: Final = 10  # 4294967295; more digits cannot fit 32 bits


class ForbiddenURLError(ReasonError):
    """An artifact URL (or an address its host resolved to) that must not be fetched.

    Always ``SourceFetchFailed`` and not transient: the same URL is refused
    again, so retrying is pointless (JaaS classifies the urlguard sentinels
    as non-transient in ``internal/operator/reconciler.go``).

    Attributes:
        host: the host (or resolved address) refused; None when the URL has
            none or cannot be parsed.
        why: the rule that fired, e.g. ``"loopback"``.
    """

    def __init__(self, message: str, *, host: str | None, why: str) -> None:
        super().__init__(Reason.SOURCE_FETCH_FAILED, message, transient=False)
        self.host = host
        self.why = why


def redact(url: str | URL) -> str:
    """The URL without userinfo, query string and fragment, fit for a message.

    An unparsable string is cut at the first ``?`` or ``#`` and loses
    anything between ``//`` and the last ``@`` of its authority, so even a
    malformed URL does not leak credentials.

    Args:
        url: an absolute or relative URL, parsed or not.

    Returns:
        e.g. ``http://host:8080/path`` for ``http://u:p@host:8080/path?t=1#f``.
    """
    try:
        parsed = url if isinstance(url, URL) else URL(url)
        if parsed.absolute:
            return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except ValueError:
        pass
    text = re.split(r"[?#]", str(url), maxsplit=1)[0]
    return re.sub(r"^([^:/]*:)?//[^/]*@", r"\1//", text)


def parse_ipv4(text: str) -> IPv4Address | None:
    """Read ``text`` the way inet_aton(3) does, or return None.

    1 to 4 dot-separated parts, each decimal, ``0x``/``0X`` hex or
    leading-``0`` octal; the last part fills the remaining 32, 24, 16 or 8
    bits, the others 8 bits each. So ``2130706433``, ``0x7f000001``,
    ``017700000001``, ``127.1``, ``127.0.1`` and ``0x7f.0.0.1`` are all
    127.0.0.1. Mirrors JaaS ``parseAlternativeIPv4`` except that, like
    glibc, it accepts neither ``0o``/``0b`` prefixes nor underscores.

    Args:
        text: a host without brackets or trailing dot.

    Returns:
        The address, or None if ``text`` is no IPv4 address in any form
        (a DNS name, an empty part, a part out of range).
    """
    parts = text.split(".")
    if len(parts) > 4:
        return None
    values: list[int] = []
    for part in parts:
        if not _IPV4_PART.fullmatch(part):
            return None
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:], 16))
        elif part.startswith("0"):
            values.append(int(part, 8))
        elif len(part) > _MAX_DECIMAL_DIGITS:
            return None
        else:
            values.append(int(part))
    *head, last = values
    last_bits = 8 * (5 - len(values))
    if any(value > 0xFF for value in head) or last >= 1 << last_bits:
        return None
    address = 0
    for value in head:
        address = address << 8 | value
    return IPv4Address(address << last_bits | last)


def forbidden_address(ip: IPv4Address | IPv6Address, *, allow_loopback: bool) -> str | None:
    """Why ``ip`` must not be connected to, or None if it may be.

    JaaS ``ipIsForbidden``: loopback, link-local unicast, link-local
    multicast, multicast, unspecified, and 0.0.0.0/8 ("this network"). An
    IPv6 address that embeds an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
    IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
    ``2002:aabb:ccdd::``) is refused when the embedded address is.

    Args:
        ip: the address; an IPv6 scope id is ignored.
        allow_loopback: permit 127.0.0.0/8, ::1 and IPv4-mapped 127.0.0.0/8
            (all of which the kernel delivers to this host's loopback); every
            other rule still applies, and loopback embedded in a NAT64, 6to4
            or IPv4-compatible address (reached through a translator, not
            here) stays refused.

    Returns:
        e.g. ``"loopback"``, ``"link-local (cloud metadata)"``,
        ``"link-local multicast"``, ``"multicast"``, ``"unspecified"``,
        ``"this-network 0.0.0.0/8"``, or for an embedded address
        ``"loopback: 127.0.0.1 embedded as IPv4-mapped IPv6"``; None if allowed.
    """
    why = _direct_refusal(ip, allow_loopback=allow_loopback)
    if why is not None or isinstance(ip, IPv4Address):
        return why
    for form, embedded, loopback_ok in _embedded_ipv4(ip):
        inner = forbidden_address(embedded, allow_loopback=allow_loopback and loopback_ok)
        if inner is not None:
            return f"{inner}: {embedded} embedded as {form}"
    return None


def _direct_refusal(ip: IPv4Address | IPv6Address, *, allow_loopback: bool) -> str | None:
    """The rule ``ip`` itself breaks, not looking inside IPv6 forms."""
    if ip.is_loopback:
        return None if allow_loopback else "loopback"
    if ip.is_unspecified:
        return "unspecified"
    if isinstance(ip, IPv4Address):
        if ip in _THIS_NETWORK:
            return "this-network 0.0.0.0/8"
        if ip == _METADATA:
            return "link-local (cloud metadata)"
        if ip in _IPV4_LINK_LOCAL_MULTICAST:
            return "link-local multicast"
    elif ip.is_multicast and int(ip) >> 112 & 0xF == 0x2:
        # ffX2::/16: scope 2 is link-local (Go's IsLinkLocalMulticast).
        return "link-local multicast"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    return None


def _embedded_ipv4(ip: IPv6Address) -> list[tuple[str, IPv4Address, bool]]:
    """(form, embedded IPv4, whether allow_loopback may apply) for each form ``ip`` is in."""
    forms: list[tuple[str, IPv4Address, bool]] = []
    value = int(ip)
    if ip.ipv4_mapped is not None:
        forms.append(("IPv4-mapped IPv6", ip.ipv4_mapped, True))
    elif value >> 32 == 0 and value > 1:  # ::/96 except :: and ::1 (RFC 4291 §2.5.5.1)
        forms.append(("IPv4-compatible IPv6", IPv4Address(value & 0xFFFFFFFF), False))
    if ip in _NAT64:
        forms.append(("NAT64 64:ff9b::/96", IPv4Address(value & 0xFFFFFFFF), False))
    if ip.sixtofour is not None:
        forms.append(("6to4 2002::/16", ip.sixtofour, False))
    return forms


@dataclass(frozen=True)
class URLGuard:
    """The SSRF check for artifact URLs, their redirect targets and resolved addresses.

    Args:
        allow_loopback: permit loopback (127.0.0.0/8, ::1, ``localhost`` and
            names under ``.localhost``) and nothing else; for tests and
            demos that serve artifacts on 127.0.0.1 (the operator flag
            ``--artifact-allow-loopback``; JaaS's ``PermissiveHTTPURL`` goes
            further and skips the host denylist altogether).
    """

    allow_loopback: bool = False

    def check(self, url: str | URL) -> URL:
        """Parse ``url`` and refuse it unless it is safe to request.

        Rules as JaaS ``ValidateHTTPURL`` (see the module docstring). The
        host judged is yarl's (``raw_host``, the one aiohttp connects to,
        and its decoded form), so ``http://127.0.0.1:80@evil.example/`` is
        judged by ``evil.example``; request the returned URL, not the string.

        Args:
            url: an artifact URL or a redirect target (absolute).

        Returns:
            The parsed URL.

        Raises:
            ForbiddenURLError: the URL cannot be parsed, its scheme is not
                http or https (any case), it has no host, or its host is
                forbidden; the message names the host and the rule.
        """
        try:
            parsed = url if isinstance(url, URL) else URL(url)
        except ValueError as err:
            raise ForbiddenURLError(
                f"artifact URL {redact(url)!r} cannot be parsed: {err}",
                host=None,
                why="unparsable",
            ) from err
        if parsed.scheme.lower() not in ("http", "https"):
            raise ForbiddenURLError(
                f"artifact URL {redact(parsed)!r} must use http or https, "
                f"not {parsed.scheme or 'no scheme'!r}",
                host=parsed.host,
                why="scheme",
            )
        raw_host = parsed.raw_host
        if not raw_host:
            raise ForbiddenURLError(
                f"artifact URL {redact(parsed)!r} has no host", host=None, why="no host"
            )
        for candidate in _spellings(raw_host, parsed.host):
            why = self._host_refusal(candidate)
            if why is not None:
                raise ForbiddenURLError(
                    f"artifact URL {redact(parsed)}: host {parsed.host or raw_host!r} "
                    f"is forbidden ({why})",
                    host=parsed.host or raw_host,
                    why=why,
                )
        return parsed

    def check_address(self, ip: str) -> None:
        """Refuse a resolved address at connect time (the DNS-rebinding defence).

        JaaS ``ForbiddenIP``, applied by the fetcher's resolver to every
        address a host name resolves to.

        Args:
            ip: a numeric IPv4 or IPv6 address as a resolver returns it; an
                IPv6 scope id (``fe80::1%eth0``) is allowed.

        Raises:
            ForbiddenURLError: the address is forbidden (see
                :func:`forbidden_address`) or is not a numeric address.
        """
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            raise ForbiddenURLError(
                f"resolved address {ip!r} is not an IP address", host=ip, why="not an IP address"
            ) from None
        why = forbidden_address(address, allow_loopback=self.allow_loopback)
        if why is not None:
            raise ForbiddenURLError(f"address {ip} is forbidden ({why})", host=ip, why=why)

    def _host_refusal(self, host: str) -> str | None:
        """Why one spelling of a URL host is refused, or None (a DNS name or allowed IP)."""
        if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in host):
            return "whitespace or control characters in the host"
        if ":" in host:
            # Only a bracketed IPv6 literal has a colon in yarl's host; aiohttp
            # connects to such a host directly, without the resolver.
            try:
                ip6 = IPv6Address(host.split("%", 1)[0])
            except ValueError:
                return "not a valid IPv6 address"
            return forbidden_address(ip6, allow_loopback=self.allow_loopback)
        name = host.rstrip(".")  # resolvers drop the root dot: 127.0.0.1. is 127.0.0.1
        if not name:
            return "empty host name"
        lowered = name.lower()
        if lowered == "localhost" or lowered.endswith(".localhost"):
            return None if self.allow_loopback else "loopback name localhost"
        ip4 = parse_ipv4(name)
        if ip4 is not None:
            return forbidden_address(ip4, allow_loopback=self.allow_loopback)
        if name.replace(".", "").isdigit():
            # aiohttp's is_ip_address heuristic would skip the resolver (and with
            # it the connect-time check) for this host; it is no address, refuse.
            return "numeric host that is not a valid IPv4 address"
        return None


def _spellings(raw_host: str, host: str | None) -> list[str]:
    """The forms of a URL host to judge: as sent, as decoded, and percent-decoded."""
    forms = [raw_host]
    if host is not None and host != raw_host:
        forms.append(host)
    for form in list(forms):
        if "%" in form and ":" not in form:
            decoded = unquote(form)
            if decoded not in forms:
                forms.append(decoded)
    return forms
