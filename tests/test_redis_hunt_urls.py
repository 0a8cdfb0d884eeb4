"""A store URL's database number past what Redis takes: one line naming the database, as one past the
server's ``databases`` is, not Redis's own words about a value out of range."""

from __future__ import annotations

import pytest

from engine import open_store
from engine.models import StoreError
from tests.fixtures_redis import RedisServer

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("db", ["/2147483648", "/99999999999999999999", "?db=4294967296"])
async def test_a_database_number_past_redis_range_is_named_as_no_such_database(
    redis_server: RedisServer, db: str
) -> None:
    """It said "redis HOST:PORT: value is out of range, value must between -2147483648 and 2147483647",
    which named neither the URL's database nor what to change."""
    with pytest.raises(StoreError) as e:
        async with open_store(f"redis://127.0.0.1:{redis_server.port}{db}", namespace="t", checkpoint_mirror=None):
            pass
    assert str(e.value) == (
        f"redis 127.0.0.1:{redis_server.port}: no such database: the number in the store URL (/DB) is not below"
        " the server's `databases`"
    )
    assert redis_server.client().dbsize() == 0
