"""A small OpenAI-compatible chat-completions server on loopback, for the tests.

It streams `echo: <last user message>` word by word as Server-Sent Events.
A message containing `overload` gets 429, `crash` gets 500, `nostream` a
plain JSON 200, `slow` streams one word per 50 ms; `midfail`, `truncate` and
`abort` start streaming and then fail; an unknown model gets 404.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

MODEL = "tiny-chat"


class OpenAIServer:
    def __init__(self, replies: Callable[[str], str] | None = None) -> None:
        # With `replies`, a model of the test's making: prompt -> completion.
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.disconnects = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="openai-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> OpenAIServer:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopping.wait()
        server.close()
        handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
            body = json.loads(await reader.readexactly(int(headers.get("content-length", 0))))
            self.requests.append(body)
            self.headers.append(headers)
            await self._answer(body, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            self.disconnects += 1
        finally:
            writer.close()

    async def _answer(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        text = body["messages"][-1]["content"]
        if body.get("model") != MODEL:
            await _plain(writer, 404, {"error": {"message": "model not found"}})
        elif "overload" in text:
            await _plain(writer, 429, {"error": {"message": "slow down"}}, retry=2)
        elif "crash" in text:
            await _plain(writer, 500, {"error": {"message": "boom"}})
        elif "nostream" in text:
            await _plain(writer, 200, {"choices": [{"message": {"content": "whole"}}]})
        elif text in {"midfail", "truncate", "abort"}:
            await _broken(text, writer)
        else:
            reply = self.replies(text) if self.replies is not None else f"echo: {text}"
            await _stream(body, text, reply, writer)


async def _stream(
    body: dict[str, Any], text: str, reply: str, writer: asyncio.StreamWriter
) -> None:
    words = reply.split(" ")
    words = [w + " " for w in words[:-1]] + words[-1:]
    finish = "stop"
    if len(words) > body.get("max_tokens", 1 << 30):
        words, finish = words[: body["max_tokens"]], "length"
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
    for i, word in enumerate(words):
        if "slow" in text:
            await asyncio.sleep(0.05)  # a slow model: the delay is what is served
        last = i == len(words) - 1
        choice = {
            "index": 0,
            "delta": {"content": word},
            "finish_reason": finish if last else None,
        }
        await _event(writer, {"choices": [choice]})
    usage = {"prompt_tokens": len(text.split()), "completion_tokens": len(words)}
    await _event(writer, {"choices": [], "usage": usage})
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _broken(kind: str, writer: asyncio.StreamWriter) -> None:
    """A stream that starts well and then fails the way real servers do."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
    await _event(writer, {"choices": [{"index": 0, "delta": {"content": "Hello"}}]})
    if kind == "midfail":
        await _event(writer, {"error": {"message": "CUDA out of memory"}})
    elif kind == "abort":
        choice = {"index": 0, "delta": {}, "finish_reason": "abort"}
        await _event(writer, {"choices": [choice]})
    await writer.drain()


async def _event(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    writer.write(f"data: {json.dumps(data)}\n\n".encode())
    await writer.drain()


async def _plain(
    writer: asyncio.StreamWriter, status: int, data: dict[str, Any], retry: int | None = None
) -> None:
    payload = json.dumps(data).encode()
    extra = f"retry-after: {retry}\r\n" if retry is not None else ""
    writer.write(
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
