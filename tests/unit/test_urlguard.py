"""The artifact URL guard: hostile spellings refused, in-cluster and public hosts allowed."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaas.api.reasons import Reason, ReasonError
from jaas.sources.urlguard import (
    ForbiddenURLError,
    URLGuard,
    forbidden_address,
    parse_ipv4,
    redact,
)

GUARD = URLGuard()
LOOPBACK_OK = URLGuard(allow_loopback=True)


def refusal(guard: URLGuard, url: str) -> ForbiddenURLError:
    with pytest.raises(ForbiddenURLError) as info:
        guard.check(url)
    return info.value


# (URL, a word the message must contain to say why).
HOSTILE = [
    # loopback, canonical and inet_aton spellings
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:6443/api", "loopback"),
    ("http://127.1.2.3/", "loopback"),
    ("http://2130706433/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://0X7F000001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.1/", "loopback"),
    ("http://0x7f.0.0.1/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://0x7F.1/", "loopback"),
    ("http://0000000177.0.0.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://127.0.0.1..:8080/", "loopback"),
    ("http://2130706433:6443/probe", "loopback"),
    ("http://%31%32%37.0.0.1/", "loopback"),
    ("http://１２７.０.０.１/", "loopback"),  # fullwidth digits, NFKC-normalised by yarl
    ("http://127。0。0。1/", "loopback"),  # ideographic full stops
    ("http://evil.example@127.0.0.1/", "loopback"),
    ("http://user:pw@127.0.0.1:80/", "loopback"),
    # the name localhost
    ("http://localhost/", "localhost"),
    ("http://LOCALHOST:8080/", "localhost"),
    ("http://localhost./", "localhost"),
    ("http://LocalHost./x", "localhost"),
    ("http://api.localhost/", "localhost"),
    ("http://a.b.LOCALHOST./", "localhost"),
    ("http://ｌｏｃａｌｈｏｓｔ/", "localhost"),
    # IPv6 loopback and embedded IPv4
    ("http://[::1]/", "loopback"),
    ("http://[::1]:6443/", "loopback"),
    ("http://[0:0:0:0:0:0:0:1]/", "loopback"),
    ("http://[0000::0001]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::FFFF:7F00:1]/", "loopback"),
    ("http://[::127.0.0.1]/", "loopback"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),
    ("http://[64:ff9b::127.0.0.1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[::ffff:169.254.169.254]/", "metadata"),
    ("http://[64:ff9b::a9fe:a9fe]/", "metadata"),
    ("http://[2002:a9fe:a9fe::1]/", "metadata"),
    ("http://[::ffff:0.0.0.0]/", "unspecified"),
    ("http://[::ffff:224.0.0.1]/", "multicast"),
    # link-local, cloud metadata
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.169.254./", "metadata"),
    ("http://2852039166/", "metadata"),
    ("http://0xa9fea9fe/", "metadata"),
    ("http://0xA9.0xFE.0xA9.0xFE/", "metadata"),
    ("http://169.254.43518/", "metadata"),
    ("http://169.16689662/", "metadata"),
    ("http://169.16689406/", "link-local"),  # 169.254.168.254 (JaaS's table calls it metadata)
    ("http://0251.0376.0251.0376/", "metadata"),
    ("http://169.254.170.2/", "link-local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[fe80::1%25eth0]/", "link-local"),
    ("http://[FE80::a00:27ff:fe4e:66a1]/", "link-local"),
    ("http://[febf::1]/", "link-local"),
    # multicast
    ("http://224.0.0.1/", "multicast"),
    ("http://224.0.0.251/", "link-local multicast"),
    ("http://239.255.255.255/", "multicast"),
    ("http://[ff00::1]/", "multicast"),
    ("http://[ff02::1]/", "link-local multicast"),
    ("http://[ff05::1:3]/", "multicast"),
    # unspecified and this-network 0.0.0.0/8
    ("http://0.0.0.0/", "unspecified"),
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://0:6443/", "unspecified"),
    ("http://00000000/", "unspecified"),
    ("http://0x0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://[0::0]:80/", "unspecified"),
    ("http://0.0.0.1/", "this-network"),
    ("http://0.0.0.7:6443/x", "this-network"),
    ("http://0.1.2.3/", "this-network"),
    ("http://0x00ffffff/", "this-network"),
    ("http://[::2]/", "this-network"),
    # hosts aiohttp would take for IP literals, that are no address
    ("http://1.2.3.4.5/", "not a valid IPv4"),
    ("http://4294967296/", "not a valid IPv4"),
    ("http://256.0.0.1/", "not a valid IPv4"),
]


@pytest.mark.parametrize(("url", "why"), HOSTILE)
def test_hostile_urls_are_refused(url: str, why: str) -> None:
    error = refusal(GUARD, url)
    assert isinstance(error, ReasonError)
    assert error.reason is Reason.SOURCE_FETCH_FAILED
    assert not error.transient
    assert why in error.message
    assert error.host is not None
    assert error.host in error.message


def test_hostile_table_is_large_and_distinct() -> None:
    urls = [url for url, _ in HOSTILE]
    assert len(set(urls)) == len(urls) >= 40


ALLOWED = [
    "http://example.com/a.tar.gz",
    "https://example.com",
    "HTTP://Example.COM:8080/x",
    "HtTpS://ghcr.io/foo/bar",
    "http://source-controller.flux-system.svc.cluster.local./x.tar.gz",
    "http://source-controller.flux-system.svc/path/to/artifact.tgz",
    "http://my-app:8080/",
    "http://my-app.local:443/",
    "http://12345.example.com/",
    "http://0x7f.example.com/",
    "http://0177.svc.cluster/",
    "http://service.123a/",
    "http://localhost.example.com/",
    "http://notlocalhost/",
    "http://8.8.8.8/",
    "http://8.8.8.8./",
    "http://192.0.2.1/",
    "http://10.0.0.1/",
    "http://10.255.255.255/",
    "http://172.16.0.1/",
    "http://172.31.255.254/",
    "http://192.168.1.1/",
    "http://3232235521/",  # 192.168.0.1
    "http://0xc0a80001/",
    "http://192.168.1/",  # 192.168.0.1
    "http://100.64.0.1/",  # CGNAT
    "http://100.127.255.254/",
    "http://1.0.0.0/",  # just past 0.0.0.0/8
    "http://126.255.255.255/",
    "http://128.0.0.0/",
    "http://169.253.255.255/",
    "http://169.255.0.0/",
    "http://223.255.255.255/",
    "http://[2001:db8::1]/",
    "http://[fd00::1]/",  # ULA
    "http://[fc00::1]:8080/",
    "http://[fd12:3456:789a::1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[64:ff9b::808:808]/",  # NAT64 of 8.8.8.8
    "http://[2002:c000:201::]/",  # 6to4 of 192.0.2.1
    "http://127.0.0.1:80@evil.example/",  # userinfo 127.0.0.1:80, host evil.example
    "http://xn--nxasmq6b.example/",
]


@pytest.mark.parametrize("url", ALLOWED)
def test_allowed_urls_pass(url: str) -> None:
    parsed = GUARD.check(url)
    assert parsed.scheme in ("http", "https")
    assert parsed.host


def test_userinfo_at_trick_is_judged_by_the_real_host() -> None:
    parsed = GUARD.check("http://127.0.0.1:80@evil.example/x")
    assert parsed.host == "evil.example"
    assert parsed.user == "127.0.0.1"


def test_check_returns_the_parsed_url() -> None:
    parsed = GUARD.check("https://example.com:8443/a/b.tar.gz?x=1")
    assert (parsed.host, parsed.port, parsed.path, parsed.query_string) == (
        "example.com",
        8443,
        "/a/b.tar.gz",
        "x=1",
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a.tar.gz",
        "file:///etc/passwd",
        "gopher://example.com",
        "javascript:alert(1)",
        "ssh://example.com",
        "data:text/plain,hello",
        "not a url",
        "//example.com/a.tar.gz",
    ],
)
def test_non_http_schemes_are_refused(url: str) -> None:
    error = refusal(GUARD, url)
    assert error.why == "scheme"
    assert "must use http or https" in error.message
    assert not error.transient


@pytest.mark.parametrize("url", ["http:", "https:", "http:///foo", "https:///"])
def test_missing_host_is_refused(url: str) -> None:
    error = refusal(GUARD, url)
    assert error.why == "no host"
    assert "has no host" in error.message


@pytest.mark.parametrize(
    "url", ["http://[::1/a.tar.gz", "http://example.com:99999999/", "http://%5B::1%5D/"]
)
def test_unparsable_urls_are_refused(url: str) -> None:
    error = refusal(GUARD, url)
    assert error.why == "unparsable"
    assert "cannot be parsed" in error.message
    assert not error.transient


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.255.0.9:8080/",
        "http://2130706433/",
        "http://127.1/",
        "http://localhost/",
        "http://LOCALHOST./",
        "http://api.localhost/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_allow_loopback_permits_loopback(url: str) -> None:
    assert LOOPBACK_OK.check(url).host
    assert "loopback" in refusal(GUARD, url).message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://2852039166/", "metadata"),
        ("http://[::ffff:169.254.169.254]/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://0.0.0.1/", "this-network"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        # Loopback reached through a translator is not this host's loopback.
        ("http://[64:ff9b::7f00:1]/", "NAT64"),
        ("http://[2002:7f00:1::]/", "6to4"),
        ("http://[::127.0.0.1]/", "IPv4-compatible"),
        ("ftp://127.0.0.1/", "http or https"),
    ],
)
def test_allow_loopback_permits_nothing_else(url: str, why: str) -> None:
    assert why in refusal(LOOPBACK_OK, url).message


def test_messages_carry_neither_credentials_nor_query() -> None:
    for url in [
        "http://user:secret@169.254.169.254/latest?token=hunter2#frag",
        "ftp://user:secret@example.com/a?token=hunter2",
        "http://user:secret@[::1/a?token=hunter2",
        "http://user:secret@/a?token=hunter2",
    ]:
        message = refusal(GUARD, url).message
        for leak in ("secret", "user", "hunter2", "token", "frag"):
            assert leak not in message, (url, message)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@host:8080/p/a.tar.gz?token=x#frag", "http://host:8080/p/a.tar.gz"),
        ("https://user@host/p", "https://host/p"),
        ("http://host/p?token=x", "http://host/p"),
        ("http://host/p#frag", "http://host/p"),
        ("http://host/p", "http://host/p"),
        ("http://[::1]:9/p?x", "http://[::1]:9/p"),
        ("http://u:p@ss@host/p", "http://host/p"),  # the last @ ends the userinfo
        ("http://user:secret@[::1/p?token=x", "http://[::1/p"),  # unparsable
        ("//user:secret@host/p?token=x", "//host/p"),  # relative
        ("not a url?token=x", "not a url"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_redact_accepts_a_parsed_url() -> None:
    from yarl import URL

    assert redact(URL("http://u:p@h/x?q=1")) == "http://h/x"


@pytest.mark.parametrize(
    ("ip", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "link-local multicast"),
        ("ff02::1", "link-local multicast"),
        ("239.1.2.3", "multicast"),
        ("ff0e::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.255.255.255", "this-network 0.0.0.0/8"),
        ("::ffff:127.0.0.1", "loopback: 127.0.0.1 embedded as IPv4-mapped IPv6"),
        ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata): 169.254.169.254 embedded as NAT64"),
    ],
)
def test_forbidden_address_says_why(ip: str, why: str) -> None:
    result = forbidden_address(ip_address(ip), allow_loopback=False)
    assert result is not None
    assert result.startswith(why)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "fd00::1", "2001::1"]
)
def test_forbidden_address_allows_the_rest(ip: str) -> None:
    assert forbidden_address(ip_address(ip), allow_loopback=False) is None


def test_check_address() -> None:
    GUARD.check_address("10.1.2.3")
    GUARD.check_address("fd00::2")
    LOOPBACK_OK.check_address("127.0.0.1")
    LOOPBACK_OK.check_address("::1")
    LOOPBACK_OK.check_address("::ffff:127.0.0.1")
    for guard, ip, why in [
        (GUARD, "127.0.0.1", "loopback"),
        (GUARD, "::ffff:127.0.0.1", "loopback"),
        (GUARD, "fe80::1%eth0", "link-local"),
        (LOOPBACK_OK, "169.254.169.254", "metadata"),
        (LOOPBACK_OK, "0.0.0.0", "unspecified"),
        (LOOPBACK_OK, "localhost", "not an IP address"),
    ]:
        with pytest.raises(ForbiddenURLError) as info:
            guard.check_address(ip)
        assert why in info.value.message
        assert info.value.host == ip
        assert not info.value.transient


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x000000007f000001", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("1.0x10000", "1.1.0.0"),
        ("255.255.255.255", "255.255.255.255"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_parse_ipv4_reads_inet_aton_forms(text: str, expected: str) -> None:
    assert parse_ipv4(text) == IPv4Address(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "1.2.3.4.5",
        "256.0.0.1",
        "1.256.0.1",
        "1.0.0x10000",
        "1.0x1000000",
        "0x100000000",
        "4294967296",
        "08",
        "0x",
        "0o17",
        "0b1",
        "1_000",
        "+1",
        "-1",
        "1 ",
        "example.com",
        "١٢٧.0.0.1",  # Arabic-Indic digits
    ],
)
def test_parse_ipv4_refuses_what_inet_aton_refuses(text: str) -> None:
    assert parse_ipv4(text) is None


# --- properties ----------------------------------------------------------------------------

FORBIDDEN_V4 = {
    IPv4Network("127.0.0.0/8"): "loopback",
    IPv4Network("169.254.0.0/16"): "link-local",
    IPv4Network("0.0.0.0/8"): "",  # "unspecified" for 0.0.0.0, "this-network" for the rest
    IPv4Network("224.0.0.0/4"): "multicast",
}


def in_forbidden_v4(address: int) -> bool:
    return any(IPv4Address(address) in network for network in FORBIDDEN_V4)


forbidden_v4 = st.sampled_from(sorted(FORBIDDEN_V4)).flatmap(
    lambda net: st.tuples(
        st.just(net),
        st.integers(int(net.network_address), int(net.broadcast_address)),
    )
)


@st.composite
def inet_aton_spelling(draw: st.DrawFn, address: int) -> str:
    """``address`` in 1–4 parts, each in a random radix, case and zero padding."""
    count = draw(st.integers(1, 4))
    last_bits = 8 * (5 - count)
    values = [(address >> (last_bits + 8 * (count - 2 - i))) & 0xFF for i in range(count - 1)]
    values.append(address & ((1 << last_bits) - 1))
    parts = []
    for value in values:
        radix = draw(st.sampled_from(["dec", "hex", "oct"]))
        padding = "0" * draw(st.integers(0, 3))
        if radix == "hex":
            digits = f"{value:x}"
            digits = digits.upper() if draw(st.booleans()) else digits
            parts.append(draw(st.sampled_from(["0x", "0X"])) + padding + digits)
        elif radix == "oct":
            parts.append("0" + padding + f"{value:o}")
        else:
            parts.append(str(value))
    return ".".join(parts) + draw(st.sampled_from(["", "."]))


@settings(deadline=None, max_examples=300)
@given(data=st.data(), drawn=forbidden_v4)
def test_every_spelling_of_a_forbidden_ipv4_is_refused(
    data: st.DataObject, drawn: tuple[IPv4Network, int]
) -> None:
    network, address = drawn
    host = data.draw(inet_aton_spelling(address))
    assert parse_ipv4(host.rstrip(".")) == IPv4Address(address)
    error = refusal(GUARD, f"http://{host}:8080/a.tar.gz")
    assert not error.transient
    assert FORBIDDEN_V4[network] in error.message
    if network != IPv4Network("127.0.0.0/8"):
        refusal(LOOPBACK_OK, f"http://{host}/a.tar.gz")


@settings(deadline=None, max_examples=300)
@given(data=st.data(), drawn=forbidden_v4)
def test_forbidden_ipv4_embedded_in_ipv6_is_refused(
    data: st.DataObject, drawn: tuple[IPv4Network, int]
) -> None:
    _, address = drawn
    embedded = data.draw(
        st.sampled_from(
            [
                (0xFFFF << 32) | address,  # ::ffff:a.b.c.d
                (0x0064_FF9B << 96) | address,  # 64:ff9b::a.b.c.d
                (0x2002 << 112) | (address << 80),  # 2002:aabb:ccdd::
                address,  # ::a.b.c.d (and ::, ::1 themselves)
            ]
        )
    )
    refusal(GUARD, f"http://[{IPv6Address(embedded)}]/")


@settings(deadline=None, max_examples=300)
@given(address=st.integers(0, 2**32 - 1).filter(lambda a: not in_forbidden_v4(a)))
def test_every_other_ipv4_is_allowed(address: int) -> None:
    ip = IPv4Address(address)
    assert forbidden_address(ip, allow_loopback=False) is None
    assert GUARD.check(f"http://{ip}/a.tar.gz").host == str(ip)
    GUARD.check_address(str(ip))
