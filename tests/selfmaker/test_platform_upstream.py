"""The router's upstream HTTP client against real asyncio servers on 127.0.0.1 (raw HTTP on the wire)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from common.http import ConnectError, UpstreamClosed, UpstreamError, UpstreamPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length)
    return head, body


async def _serve(handler: Handler) -> tuple[asyncio.Server, int]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except ConnectionError:
                pass

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _finish(server: asyncio.Server, *pools: UpstreamPool) -> None:
    for pool in pools:
        pool.close()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.05)  # let connection handlers see the close and finish


def _run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_echoes() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while True:
            try:
                head, body = await _read_request(reader)  # type: ignore[misc]
            except asyncio.IncompleteReadError:
                break
            assert b"X-Test: yes" in head
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        for i in range(5):
            resp = await pool.request("POST", "/invocations", {"X-Test": "yes"}, f"body-{i}".encode(), 5)
            assert (resp.status, resp.body, resp.headers["content-type"]) == (
                200,
                f"body-{i}".encode(),
                "text/plain",
            )
        await _finish(server, pool)
        assert connections == 1

    _run(main())


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n"
        b"X-Trailer: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcdefg",
        b"HTTP/1.0 200 OK\r\nContent-Length: 7\r\n\r\nabcdefg",
    ],
)
def test_chunked_read_to_close_and_http10_bodies(response: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        for i in range(0, len(response), 5):  # dribble the answer in small writes
            writer.write(response[i : i + 5])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    async def main() -> None:
        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        resp = await pool.request("POST", "/invocations", {}, b"x", 5)
        assert (resp.status, resp.body) == (200, b"abcdefg")
        await _finish(server, pool)

    _run(main())


def test_stale_idle_connection_is_retried_once() -> None:
    served = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await _read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # keep-alive advertised...
        await writer.drain()
        writer.close()  # ...but the server closes right after (like an idle timeout)

    async def main() -> None:
        server, port = await _serve(handler)
        pool = UpstreamPool("127.0.0.1", port)
        assert (await pool.request("POST", "/", {}, b"", 5)).body == b"ok"
        await asyncio.sleep(0.05)  # let the close reach us
        assert (await pool.request("POST", "/", {}, b"", 5)).body == b"ok"
        assert served == 2
        await _finish(server, pool)

    _run(main())


def test_connect_error_timeout_and_broken_responses() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await reader.read()  # never answers; returns when the client gives up and closes
        writer.close()
        await writer.wait_closed()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        with pytest.raises(ConnectError):
            await UpstreamPool("127.0.0.1", dead_port).request("POST", "/", {}, b"", 5)
        for handler, error, timeout, match in (
            (silent, asyncio.TimeoutError, 0.2, None),
            (hang_up, UpstreamClosed, 5, "before a complete response"),
            (garbage, UpstreamError, 5, "bad status line"),
        ):
            server, port = await _serve(handler)
            pool = UpstreamPool("127.0.0.1", port)
            with pytest.raises(error, match=match):
                await pool.request("POST", "/", {}, b"", timeout)
            await _finish(server, pool)

    _run(main())
