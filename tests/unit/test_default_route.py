"""default_route_in: which /proc/net routes count as a default route for kube-apiserver."""

from jaas.testing.controlplane import default_route_in

IPV4_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\n"
IPV4_DEFAULT = IPV4_HEADER + "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
IPV4_LAN_ONLY = IPV4_HEADER + "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
ZERO = "0" * 32
# What `unshare --net` leaves: loopback only, and the kernel's unreachable ::/0 on lo.
IPV6_UNREACHABLE = (
    f"{ZERO} 00 {ZERO} 00 {ZERO} ffffffff 00000001 00000000 00200200       lo\n"
    f"{'0' * 31}1 80 {ZERO} 00 {ZERO} 00000000 00000003 00000000 80200001       lo\n"
)
IPV6_DEFAULT = f"{ZERO} 00 {ZERO} 00 fd{'0' * 29}1 00000400 00000002 00000000 00000003     eth0\n"


def test_a_host_with_a_gateway_has_a_default_route() -> None:
    assert default_route_in(IPV4_DEFAULT, "")
    assert default_route_in("", IPV6_DEFAULT)
    assert default_route_in(IPV4_LAN_ONLY, IPV6_DEFAULT)


def test_a_loopback_only_namespace_has_none() -> None:
    assert not default_route_in(IPV4_HEADER, IPV6_UNREACHABLE)
    assert not default_route_in(IPV4_LAN_ONLY, "")
    assert not default_route_in("", "")


def test_a_rejecting_ipv4_default_route_does_not_count() -> None:
    rejecting = IPV4_HEADER + "lo\t00000000\t00000000\t0201\t0\t0\t0\t00000000\t0\t0\t0\n"
    down = IPV4_HEADER + "eth0\t00000000\t010200C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n"
    assert not default_route_in(rejecting, "")
    assert not default_route_in(down, "")
