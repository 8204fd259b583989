"""Managed keys in PostgreSQL seen from two nodes (two stores, each with its own engine, as two
gateway processes on two VMs): a key made on one is accepted on the other at once, a change or
a revocation reaches the other's copy within a second (LISTEN/NOTIFY), and a node keeps
authenticating from its copy while the database is down."""
from __future__ import annotations

import asyncio

import pytest

from proxy.errors import StateUnavailable
from proxy.state.pg_keys import PostgresKeyStore
from proxy.store.keys import hash_secret
from tests.shared.pgdb import engines, pg_url, postgres_server, within  # noqa: F401  (fixtures)


@pytest.fixture
async def nodes(engines):  # noqa: F811
    stores = []
    for _ in range(2):
        store = PostgresKeyStore(await engines())
        await store.start()
        stores.append(store)
    for store in stores:
        await asyncio.wait_for(store.listening.wait(), 5)
    yield stores
    for store in stores:
        await store.close()


async def test_a_key_created_on_one_node_is_accepted_on_the_other_at_once(nodes):
    a, b = nodes
    record, secret = await a.acreate("team", minute_limit=5, allowed_models=["gpt-*"])
    digest = hash_secret(secret)
    assert a.lookup(digest)["id"] == record["id"]
    # auth's slow path on B, before any notification could have been handled
    found = await b.fetch(digest)
    assert found["id"] == record["id"] and found["allowed_models"] == ["gpt-*"] and found["minute_limit"] == 5
    assert b.lookup(digest)["id"] == record["id"]
    assert "sha256" not in found and secret not in str(found)


async def test_changes_and_revocations_reach_the_other_node_within_a_second(nodes):
    a, b = nodes
    record, secret = await a.acreate("ci")
    digest = hash_secret(secret)
    await within(1.0, lambda: b.lookup(digest) is not None)      # by NOTIFY, no lookup on B

    await a.aupdate(record["id"], disabled=True, minute_limit=7)
    took = await within(1.0, lambda: b.lookup(digest)["disabled"] is True)
    assert b.lookup(digest)["minute_limit"] == 7 and took < 1.0

    assert await b.arevoke(record["id"]) is True           # revoked on B this time
    assert b.lookup(digest) is None
    await within(1.0, lambda: a.lookup(digest) is None)
    assert await a.fetch(digest) is None and a.known_missing(digest)
    assert await a.arevoke(record["id"]) is False
    assert await a.aget(record["id"]) is None


async def test_list_get_and_the_negative_cache(nodes):
    a, b = nodes
    first, _ = await a.acreate("one", balance=2.5)
    second, _ = await a.acreate("two", daily_limit=1.0)
    listed = await b.alist()
    assert [r["id"] for r in listed] == [first["id"], second["id"]]
    assert listed[0]["balance"] == 2.5 and listed[0]["usage_today"] == 0.0
    assert (await b.aget(second["id"]))["daily_limit"] == 1.0
    junk = hash_secret("mw-not-a-key")
    assert await b.fetch(junk) is None
    assert b.known_missing(junk)
    with pytest.raises(ValueError):
        await a.aupdate(first["id"], sha256="x")


async def test_database_down_keys_from_the_copy_and_changes_after_it_is_back(nodes, postgres_server):  # noqa: F811
    a, b = nodes
    record, secret = await a.acreate("kept")
    digest = hash_secret(secret)
    await within(1.0, lambda: b.lookup(digest) is not None)
    postgres_server.stop()
    try:
        await within(5.0, lambda: not b.listening.is_set())
        assert b.lookup(digest)["id"] == record["id"]          # auth goes on from the copy
        with pytest.raises(Exception):                         # an unknown key is never let in unchecked
            await b.fetch(hash_secret("mw-unknown"))
        assert not b.known_missing(hash_secret("mw-unknown"))
        with pytest.raises(StateUnavailable):
            await a.acreate("while-down")
    finally:
        postgres_server.start()
    await asyncio.wait_for(a.engine.wait_up(), 10)
    await within(10.0, lambda: a.listening.is_set() and b.listening.is_set())
    await a.arevoke(record["id"])
    await within(1.0, lambda: b.lookup(digest) is None)
