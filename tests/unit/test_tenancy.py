"""Tenant tokens: minted once per ServiceAccount, renewed before expiry, failures as reasons."""

from __future__ import annotations

import asyncio

import pytest

from jaas.api.reasons import Reason, ReasonError
from jaas.operator.tenancy import TokenCache, service_account_of
from tests.unit.fakes import FakeApi, FakeClient


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cache(api: FakeApi, clock: Clock) -> TokenCache:
    return TokenCache(FakeClient(api).as_kube(), clock=clock)


async def test_one_mint_for_many_concurrent_callers() -> None:
    api = FakeApi()
    api.service_accounts.add(("ns", "sa"))
    tokens = cache(api, Clock(0))
    values = await asyncio.gather(*(tokens.token("ns", "sa") for _ in range(50)))
    assert set(values) == {"token-1"}
    assert api.tokens_minted == 1
    assert tokens.mints == 1


async def test_tokens_are_renewed_before_they_expire() -> None:
    api = FakeApi()
    api.service_accounts.add(("ns", "sa"))
    expires = 32472144000.0  # 2999-01-01T00:00:00Z, what the fake API grants
    clock = Clock(expires - 3600)
    tokens = cache(api, clock)
    assert await tokens.token("ns", "sa") == "token-1"
    clock.now = expires - 301  # within the lifetime, outside the 5-minute margin
    assert await tokens.token("ns", "sa") == "token-1"
    clock.now = expires - 299
    assert await tokens.token("ns", "sa") == "token-2"


async def test_the_refresh_margin_is_at_most_a_third_of_the_lifetime() -> None:
    api = FakeApi()
    api.service_accounts.add(("ns", "sa"))
    expires = 32472144000.0
    clock = Clock(expires - 600)  # a 10-minute token: renew after 400 s, not after 300 s
    tokens = cache(api, clock)
    await tokens.token("ns", "sa")
    clock.now = expires - 201
    assert await tokens.token("ns", "sa") == "token-1"
    clock.now = expires - 199
    assert await tokens.token("ns", "sa") == "token-2"


async def test_invalidate_drops_only_the_refused_token() -> None:
    api = FakeApi()
    api.service_accounts.add(("ns", "sa"))
    tokens = cache(api, Clock(0))
    await tokens.token("ns", "sa")
    tokens.invalidate("ns", "sa", "stale-other-token")
    assert await tokens.token("ns", "sa") == "token-1"
    tokens.invalidate("ns", "sa", "token-1")
    assert await tokens.token("ns", "sa") == "token-2"


async def test_mint_failures_become_reasons() -> None:
    api = FakeApi()
    api.service_accounts.add(("ns", "denied"))
    tokens = cache(api, Clock(0))
    with pytest.raises(ReasonError) as missing:
        await tokens.token("ns", "ghost")
    assert missing.value.reason is Reason.SERVICE_ACCOUNT_MISSING
    assert not missing.value.transient
    api.deny("operator", "create", "serviceaccounts/token")
    with pytest.raises(ReasonError) as denied:
        await tokens.token("ns", "denied")
    assert denied.value.reason is Reason.RBAC_DENIED
    assert "serviceaccounts/token" in denied.value.message
    assert tokens.failures == 2


def test_the_service_account_comes_from_the_spec_then_the_default() -> None:
    assert service_account_of("ns", "mine", "default") == ("ns", "mine")
    assert service_account_of("ns", None, "default") == ("ns", "default")
    with pytest.raises(ReasonError) as err:
        service_account_of("ns", None, None)
    assert err.value.reason is Reason.SERVICE_ACCOUNT_MISSING
