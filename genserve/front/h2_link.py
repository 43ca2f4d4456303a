"""One HTTP/2 connection over asyncio, either side, its events handed to a queue per stream (the ``h2``
library does the protocol; this only moves its bytes and events).

Flow control is what bounds memory: received DATA is acknowledged (:meth:`Link.consumed`) only once it was
handed on, so a sender can be ahead by one window at most, and :meth:`Link.send_data` waits for the peer's
window before it writes.
"""

from __future__ import annotations

import asyncio
import logging

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

# How far a peer may send ahead on one stream, and on the connection: a few round trips of a large message on
# loopback, and so the most a large request costs the front while it passes.
STREAM_WINDOW = 1 << 20
CONNECTION_WINDOW = 4 << 20
MAX_FRAME = 1 << 20
MAX_STREAMS = 1024  # calls at once on one connection (h2's default of 100 would queue a busy client's)
_READ_BYTES = 1 << 18
logger = logging.getLogger("genserve.front")


class Link:
    """An HTTP/2 connection on ``reader``/``writer``; :meth:`run` reads it until it closes. Server side,
    ``on_request(stream_id, headers)`` is called for each new stream; every stream's later events arrive in
    :meth:`events` as ``("headers", headers, ended)``, ``("trailers", headers)``, ``("data", bytes,
    flow_length)``, ``("end",)`` and ``("reset", error_code)``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client_side: bool, on_request=None
    ):
        self._reader, self._writer = reader, writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=client_side, header_encoding=None, validate_inbound_headers=False)
        )
        self._on_request = on_request
        self._queues: dict[int, asyncio.Queue] = {}
        self._window = asyncio.Event()
        self.closed = False

    async def open(self) -> None:
        self.h2.initiate_connection()
        # Applied when the peer acknowledges them (h2 holds them pending until then).
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            }
        )
        # Taken at once: h2 applies a new frame size only from its next read, so a frame that arrived in the
        # same read as the peer's acknowledgement was refused (FRAME_SIZE_ERROR, the connection lost).
        self.h2.max_inbound_frame_size = MAX_FRAME
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        await self.flush()

    def events(self, stream_id: int) -> asyncio.Queue:
        return self._queues.setdefault(stream_id, asyncio.Queue())

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self._writer.write(data)
            await self._writer.drain()

    async def run(self) -> None:
        try:
            while not self.closed and (data := await self._reader.read(_READ_BYTES)):
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError as error:
                    logger.warning("HTTP/2 connection closed: %s", error)
                    await self.flush()  # h2's GOAWAY
                    break
                for event in events:
                    self._dispatch(event)
                await self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            self.close()

    def _dispatch(self, event) -> None:
        stream_id = getattr(event, "stream_id", None)
        if isinstance(event, h2.events.RequestReceived):
            self.events(stream_id)
            self._on_request(stream_id, event.headers)
        elif isinstance(event, h2.events.ResponseReceived):
            self.events(stream_id).put_nowait(("headers", event.headers, event.stream_ended is not None))
        elif isinstance(event, h2.events.TrailersReceived):
            self.events(stream_id).put_nowait(("trailers", event.headers))
        elif isinstance(event, h2.events.DataReceived):
            if stream_id in self._queues:
                self._queues[stream_id].put_nowait(("data", event.data, event.flow_controlled_length))
            else:  # a stream already given up: its bytes are dropped, and the connection's window reopened
                self.consumed(stream_id, event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            self.events(stream_id).put_nowait(("end",))
        elif isinstance(event, h2.events.StreamReset):
            self.events(stream_id).put_nowait(("reset", event.error_code))
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def forget(self, stream_id: int) -> None:
        self._queues.pop(stream_id, None)

    def consumed(self, stream_id: int, length: int) -> None:
        """``length`` received bytes of ``stream_id`` were handed on: the peer may send as many more."""
        if length:
            try:
                self.h2.acknowledge_received_data(length, stream_id)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(length)  # the stream is gone; the connection's window not

    async def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False) -> None:
        """Write ``data`` on ``stream_id`` as the peer's windows allow (waiting for them to open)."""
        data = memoryview(data)
        while True:
            if self.closed:
                raise ConnectionError("the HTTP/2 connection closed")
            allowed = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if allowed <= 0 and data:
                self._window.clear()
                await self._window.wait()
                continue
            chunk, data = data[:allowed], data[allowed:]
            self.h2.send_data(stream_id, chunk.tobytes(), end_stream=end_stream and not data)
            await self.flush()
            if not data:
                return

    async def send_headers(self, stream_id: int, headers, end_stream: bool = False) -> None:
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        await self.flush()

    async def end_stream(self, stream_id: int) -> None:
        self.h2.end_stream(stream_id)
        await self.flush()

    async def reset(self, stream_id: int, error_code: int = 8) -> None:  # 8: CANCEL
        try:
            self.h2.reset_stream(stream_id, error_code)
            await self.flush()
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
        for queue in self._queues.values():
            queue.put_nowait(("reset", 0))
        self._window.set()
        self._writer.close()


async def connect(address: str) -> Link:
    """A client connection to ``host:port``, running (its reader task holds it until it closes)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
    link = Link(reader, writer, client_side=True)
    await link.open()
    link.task = asyncio.create_task(link.run())
    return link
