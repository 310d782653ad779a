"""Shadow mirroring: answer comparison, sampling share, and fire-and-forget copies against a real HTTP
server whose shadow answers are slow, failing or different."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from selfmaker.features.shadow.mirror import Answer, ShadowMirror, outputs_match, shadow_fraction


def test_outputs_match_json_csv_and_bytes() -> None:
    assert outputs_match(b'{"p": [0.1, 0.2]}', b'{"p":[0.1000000001, 0.2]}', "application/json")
    assert not outputs_match(b'{"p": [0.1, 0.2]}', b'{"p": [0.1, 0.3]}', "application/json")
    assert not outputs_match(b'{"p": [0.1]}', b'{"q": [0.1]}', "application/json")
    assert outputs_match(b"1,0.5\n0,0.25\n", b"1,0.50000001\n0,0.25", "text/csv")
    assert not outputs_match(b"1,0.5\n", b"0,0.5\n", "text/csv")
    assert outputs_match(b"\x00\x01", b"\x00\x01", "application/x-npy")
    assert not outputs_match(b"\x00\x01", b"\x00\x02", "application/x-npy")
    assert outputs_match(b'{"a":1}\n{"a":2}\n', b'{"a": 1}\n{"a": 2}', "application/jsonlines")


@given(
    st.recursive(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(), st.text(max_size=5)
        ),
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=4), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_a_json_answer_matches_itself(value: object) -> None:
    body = json.dumps(value).encode()
    assert outputs_match(body, json.dumps(value, indent=1).encode(), "application/json")


@given(shadow=st.floats(min_value=0, max_value=100), production=st.floats(min_value=0, max_value=100))
def test_shadow_fraction_is_a_share(shadow: float, production: float) -> None:
    fraction = shadow_fraction(shadow, production)
    assert 0.0 <= fraction <= 1.0
    if shadow > 0 and production > 0 and shadow >= production:
        assert fraction == 1.0
    if shadow == 0:
        assert fraction == 0.0


async def _with_server(
    behaviour: Callable[[web.Request], Awaitable[web.Response]], body: Callable[[str], Awaitable[None]]
) -> None:
    app = web.Application()
    app.router.add_post("/invocations", behaviour)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await body(f"http://127.0.0.1:{port}/invocations")
    finally:
        await runner.cleanup()


def _sender(session: aiohttp.ClientSession, url: str, payload: bytes) -> Callable[[], Awaitable[Answer]]:
    async def send() -> Answer:
        async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as resp:
            return Answer(resp.status, await resp.read(), resp.headers.get("Content-Type"))

    return send


def test_copies_are_scheduled_without_waiting_and_counted() -> None:
    seen: list[bytes] = []

    async def shadow(request: web.Request) -> web.Response:
        data = await request.read()
        seen.append(data)
        await asyncio.sleep(0.3)  # slow shadow
        if data == b'{"x": 2}':
            return web.json_response({"error": "boom"}, status=500)
        return web.json_response({"y": 1.0 if data == b'{"x": 1}' else 9.0})

    async def body(url: str) -> None:
        mirror = ShadowMirror(timeout=5)
        primary = Answer(200, b'{"y": 1.0}', "application/json")
        async with aiohttp.ClientSession() as session:
            for x in (1, 2, 3):
                assert mirror.mirror("shadow", _sender(session, url, json.dumps({"x": x}).encode()), primary)
            assert (
                mirror.in_flight == 3 and seen == []
            )  # scheduled, not awaited: the primary path never waits
            await mirror.drain(10)
        stats = mirror.stats["shadow"].snapshot()
        assert sorted(seen) == [b'{"x": 1}', b'{"x": 2}', b'{"x": 3}']
        assert (stats["requests"], stats["errors"], stats["compared"], stats["mismatches"]) == (3, 1, 2, 1)
        assert (
            stats["latency_count"] == 3 and stats["latency_p99_seconds"] >= stats["latency_p50_seconds"] > 0
        )

    asyncio.run(_with_server(shadow, body))


def test_unreachable_shadow_and_overflow_are_counted_not_raised() -> None:
    async def scenario() -> None:
        mirror = ShadowMirror(max_in_flight=2, timeout=2)
        async with aiohttp.ClientSession() as session:
            send = _sender(session, "http://127.0.0.1:9/invocations", b"{}")  # nothing listens on port 9
            results = [mirror.mirror("s", send, None) for _ in range(4)]
            await mirror.drain(10)
        stats = mirror.stats["s"].snapshot()
        assert results == [True, True, False, False]
        assert (stats["requests"], stats["errors"], stats["dropped"]) == (2, 2, 2)

    asyncio.run(scenario())


def test_sampling_fraction_limits_copies() -> None:
    draws = iter([0.1, 0.6, 0.2, 0.9])

    async def scenario() -> None:
        mirror = ShadowMirror(rng=lambda: next(draws))

        async def send() -> Answer:
            return Answer(200, b"1", "text/csv")

        sent = [mirror.mirror("s", send, Answer(200, b"1", "text/csv"), fraction=0.5) for _ in range(4)]
        await mirror.drain(5)
        assert sent == [True, False, True, False]
        assert mirror.stats["s"].snapshot()["compared"] == 2

    asyncio.run(scenario())
