"""Serving threads: read a request from the channel, dispatch it, write the reply.

Several threads read the one ``/dev/fuse`` descriptor; the kernel gives each
request to one of them, so a slow request (an RPC waiting on the server)
holds one thread and the others go on serving. Each thread owns its buffers:
the request buffer (a WRITE's payload is handed to the operations in place);
a READ reply points into the region mapping itself. All threads end when the
file system is unmounted.
"""

from __future__ import annotations

import ctypes
import logging
import threading

from daxfs.client.fuse.kernel.channel import Channel
from daxfs.client.fuse.kernel.dispatch import REQUEST_BUFFER, Dispatcher, Reply, Request

log = logging.getLogger(__name__)

#: Serving threads. Most of a request's time is an RPC or a memory copy, both
#: outside the GIL, so a few more threads than cores keep the kernel's queue short.
DEFAULT_THREADS = 8


class KernelSession:
    """The serving threads of one mount."""

    def __init__(self, channel: Channel, dispatcher: Dispatcher, threads: int = DEFAULT_THREADS):
        self.channel = channel
        self.dispatcher = dispatcher
        self._threads = [
            threading.Thread(target=self._serve, name=f"daxfs-fuse-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def running(self) -> bool:
        """False once every thread ended (the file system was unmounted)."""
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float | None = None) -> None:
        for t in self._threads:
            t.join(timeout)

    def _send(self, reply: Reply) -> None:
        try:
            self.channel.send(reply)
        except OSError:
            # A malformed reply (EINVAL) is this daemon's bug: the caller sees
            # an error from the kernel; keep serving the others.
            log.exception("the kernel refused a reply")

    def _serve(self) -> None:
        inbuf = (ctypes.c_ubyte * REQUEST_BUFFER)()
        data = memoryview(inbuf).cast("B")
        address = ctypes.addressof(inbuf)
        while True:
            n = self.channel.receive(data)
            if n == 0:
                return
            req = Request(data[:n], address, self._send)
            reply = self.dispatcher.handle(req)
            if reply is None:
                continue
            try:
                self.channel.send(reply)
            except OSError:
                # A malformed reply (EINVAL) is this daemon's bug: the caller
                # sees EIO from the kernel; keep serving the others.
                log.exception("the kernel refused a reply")
