#!/usr/bin/env python3
"""Spike (issue 16): a FUSE daemon in plain Python that speaks the kernel protocol itself.

``python benchmarks/fuse_spike/rawfuse.py FILE MOUNTPOINT`` mounts a one-file
file system at MOUNTPOINT (the file is ``MOUNTPOINT/<basename of FILE>``)
whose bytes are an ``mmap`` of FILE (a /dev/shm file standing in for the
region). No libfuse: it opens /dev/fuse, mounts with mount(2) through ctypes,
reads each request with ``os.readv`` into one preallocated buffer, parses
``fuse_in_header`` and answers with ``os.writev``. A READ is answered with
``writev([out_header, memoryview(mapping)[off:off + n]])``: the kernel copies
the bytes from the mapping straight into the reader's buffer, the only copy.
Attributes and entries carry long timeouts (the kernel caches them; the
coherent design would invalidate them with notify_inval_inode/entry).

It negotiates max_pages=256 (1 MiB requests) and asks for
FUSE_DIRECT_IO_ALLOW_MMAP; the INIT outcome is printed on stderr as one
``init:`` line (``--no-allow-mmap`` leaves the flag out, to see the difference).
Unmount with ``fusermount3 -u MOUNTPOINT``; the loop ends on
ENODEV. Never imported by the daxfs package.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import struct
import sys

# fuse_kernel.h (protocol 7.39), the pieces this spike needs.
FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR = 1, 2, 3
FUSE_OPEN, FUSE_READ, FUSE_STATFS, FUSE_RELEASE = 14, 15, 17, 18
FUSE_FLUSH, FUSE_INIT, FUSE_OPENDIR, FUSE_READDIR, FUSE_RELEASEDIR = 25, 26, 27, 28, 29
FUSE_INTERRUPT, FUSE_DESTROY, FUSE_BATCH_FORGET = 36, 38, 42
NO_REPLY = {FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT}

FUSE_ASYNC_READ = 1 << 0
FUSE_BIG_WRITES = 1 << 5
FUSE_PARALLEL_DIROPS = 1 << 18
FUSE_MAX_PAGES = 1 << 22
FUSE_INIT_EXT = 1 << 30
FUSE_DIRECT_IO_ALLOW_MMAP = 1 << 36  # 7.39, in flags2 (bit 4) under FUSE_INIT_EXT
FOPEN_DIRECT_IO = 1 << 0

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique
INIT_IN = struct.Struct("<IIIII")  # major, minor, max_readahead, flags, flags2
# major, minor, max_readahead, flags, max_background, congestion_threshold, max_write,
# time_gran, max_pages, map_alignment, flags2, unused[7]
INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")  # fuse_attr, 88 bytes
ATTR_OUT = struct.Struct("<QII")  # attr_valid, attr_valid_nsec, dummy; then fuse_attr
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid, generation, entry_valid, attr_valid, nsecs
OPEN_OUT = struct.Struct("<QIi")  # fh, open_flags, backing_id
READ_IN = struct.Struct("<QQII")  # fh, offset, size, read_flags (lock_owner etc. follow)
KSTATFS = struct.Struct("<QQQQQIIII24x")
DIRENT = struct.Struct("<QQII")  # ino, off, namelen, type

ROOT_ID, FILE_ID = 1, 2
VALID = 86400  # seconds the kernel may cache attributes and entries
MAX_PAGES = 256
BUFSIZE = MAX_PAGES * 4096 + 4096  # a WRITE of max_write bytes plus its headers


def mount(fd: int, mountpoint: str) -> None:
    """mount(2) of a ``fuse.rawspike`` file system on ``fd`` (needs CAP_SYS_ADMIN)."""
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},allow_other"
    ms_nosuid, ms_nodev = 2, 4
    rc = libc.mount(
        b"rawspike",
        mountpoint.encode(),
        b"fuse.rawspike",
        ctypes.c_ulong(ms_nosuid | ms_nodev),
        opts.encode(),
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {mountpoint}: {os.strerror(err)}")


class Spike:
    """The one-file file system: a root directory holding ``name``, bytes from ``data``."""

    def __init__(self, fd: int, name: str, data: mmap.mmap, allow_mmap: bool = True) -> None:
        self.allow_mmap = allow_mmap
        self.fd = fd
        self.name = name.encode()
        self.data = data
        self.view = memoryview(data)
        self.size = len(data)
        self.mapping_ok = False
        self.reads = 0
        self.max_read = 0
        self.read_bytes = 0

    def attr(self, nodeid: int) -> bytes:
        if nodeid == ROOT_ID:
            mode, size, nlink = stat.S_IFDIR | 0o755, 0, 2
        else:
            mode, size, nlink = stat.S_IFREG | 0o644, self.size, 1
        blocks = (size + 511) // 512
        return ATTR.pack(nodeid, size, blocks, 0, 0, 0, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)

    def reply(self, unique: int, *payload: bytes | memoryview) -> None:
        n = OUT_HEADER.size + sum(len(p) for p in payload)
        os.writev(self.fd, [OUT_HEADER.pack(n, 0, unique), *payload])

    def error(self, unique: int, err: int) -> None:
        os.write(self.fd, OUT_HEADER.pack(OUT_HEADER.size, -err, unique))

    def init(self, unique: int, body: memoryview) -> None:
        major, minor, max_readahead, flags, flags2 = INIT_IN.unpack_from(body)
        offered = flags | (flags2 << 32 if flags & FUSE_INIT_EXT else 0)
        want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES
        want |= FUSE_INIT_EXT | (FUSE_DIRECT_IO_ALLOW_MMAP if self.allow_mmap else 0)
        got = offered & want
        self.mapping_ok = bool(got & FUSE_DIRECT_IO_ALLOW_MMAP)
        print(
            f"init: kernel {major}.{minor} flags=0x{offered:x}; "
            f"max_pages={MAX_PAGES} (offered: {bool(offered & FUSE_MAX_PAGES)}); "
            f"DIRECT_IO_ALLOW_MMAP offered={bool(offered & FUSE_DIRECT_IO_ALLOW_MMAP)}, "
            f"taken={self.mapping_ok}",
            file=sys.stderr,
            flush=True,
        )
        out = INIT_OUT.pack(
            7,
            min(minor, 39),
            max_readahead,
            got & 0xFFFFFFFF,
            16,
            12,
            MAX_PAGES * 4096,
            1,
            MAX_PAGES,
            0,
            got >> 32,
        )
        self.reply(unique, out)

    def serve(self) -> None:
        buf = bytearray(BUFSIZE)
        mv = memoryview(buf)
        while True:
            try:
                n = os.readv(self.fd, [buf])
            except OSError as e:
                if e.errno == errno.ENODEV:  # unmounted
                    return
                if e.errno in (errno.EINTR, errno.ENOENT, errno.EAGAIN):
                    continue
                raise
            _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(buf)
            body = mv[IN_HEADER.size : n]
            if opcode == FUSE_READ:
                _, offset, size, _ = READ_IN.unpack_from(body)
                end = min(offset + size, self.size)
                self.reply(unique, self.view[offset:end] if offset < end else b"")
                self.reads += 1
                self.max_read = max(self.max_read, end - offset)
                self.read_bytes += max(end - offset, 0)
            elif opcode == FUSE_GETATTR:
                self.reply(unique, ATTR_OUT.pack(VALID, 0, 0), self.attr(nodeid))
            elif opcode == FUSE_LOOKUP:
                if nodeid == ROOT_ID and bytes(body[: len(self.name) + 1]) == self.name + b"\0":
                    entry = ENTRY_OUT.pack(FILE_ID, 0, VALID, VALID, 0, 0)
                    self.reply(unique, entry, self.attr(FILE_ID))
                else:
                    self.error(unique, errno.ENOENT)
            elif opcode in NO_REPLY:
                continue
            elif opcode in (FUSE_OPEN, FUSE_OPENDIR):
                self.reply(unique, OPEN_OUT.pack(0, FOPEN_DIRECT_IO * (opcode == FUSE_OPEN), 0))
            elif opcode in (FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_FLUSH):
                self.reply(unique)
            elif opcode == FUSE_READDIR:
                _, offset, size, _ = READ_IN.unpack_from(body)
                self.reply(unique, self.dirents(offset))
            elif opcode == FUSE_STATFS:
                blocks = (self.size + 4095) // 4096
                self.reply(unique, KSTATFS.pack(blocks, 0, 0, 2, 0, 4096, 255, 4096, 0))
            elif opcode == FUSE_INIT:
                self.init(unique, body)
            elif opcode == FUSE_DESTROY:
                self.reply(unique)
                return
            else:  # GETXATTR, ACCESS, SETATTR, WRITE, ...: not in the spike
                self.error(unique, errno.ENOSYS)

    def dirents(self, offset: int) -> bytes:
        names = [(ROOT_ID, b".", 4), (ROOT_ID, b"..", 4), (FILE_ID, self.name, 8)]
        out = b""
        for i, (ino, name, kind) in enumerate(names[offset:], start=offset + 1):
            rec = DIRENT.pack(ino, i, len(name), kind) + name
            out += rec + b"\0" * (-len(rec) % 8)
        return out


def main(argv: list[str]) -> int:
    allow_mmap = "--no-allow-mmap" not in argv
    argv = [a for a in argv if a != "--no-allow-mmap"]
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path, mountpoint = argv
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mount(fd, mountpoint)
    spike = Spike(fd, os.path.basename(path), data, allow_mmap)
    try:
        spike.serve()
    finally:
        mean = spike.read_bytes / max(spike.reads, 1)
        sizes = f"mean {mean / 1024:.0f} KiB, largest {spike.max_read // 1024} KiB"
        print(f"reads: {spike.reads}, {sizes}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
