"""The ``collector`` fixture: a real OpenTelemetry Collector for the session's tests.

Import it into ``tests/e2e/conftest.py`` (``from tests.e2e.collector_fixture
import collector``). The binary comes from ``make otelcol``
(``tools/otelcol/build.sh``). One collector serves the whole session, so a
test picks out its own spans, e.g. by a ``service.instance.id`` resource
attribute or by trace id.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jaas.testing.collector import Collector


@pytest.fixture(scope="session")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    """``jaas-otelcol`` with OTLP/gRPC and OTLP/HTTP on free loopback ports, spans to a file."""
    with Collector(tmp_path_factory.mktemp("otelcol")) as running:
        yield running
