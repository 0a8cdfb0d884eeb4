"""The floor of a durable write awaited from the event loop with one wake-up (io_uring through ctypes, its
completion read on the loop from an eventfd), against a raw blocking write + fdatasync, the same done by a
thread (``asyncio.to_thread``: two hops, what the local store does), and io_uring waited for inside its own
syscall (blocking: io_uring's own path, without the loop). Linux 5.6+; a 100-byte overwrite of one block,
as ``bench.py``'s fsync floor. See README.md section 3 ("io_uring"). ``python uring_floor.py [N] [FILE]``."""

import asyncio
import contextlib
import ctypes
import mmap
import os
import statistics
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
SETUP, ENTER, REGISTER = 425, 426, 427
OFF_SQ_RING, OFF_CQ_RING, OFF_SQES = 0, 0x8000000, 0x10000000
OP_WRITE, OP_FSYNC = 23, 3
IOSQE_IO_LINK = 1 << 2
FSYNC_DATASYNC = 1
REGISTER_EVENTFD = 4


class Ring:
    def __init__(self, entries: int = 8) -> None:
        p = ctypes.create_string_buffer(120)
        fd = libc.syscall(SETUP, entries, p)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "io_uring_setup")
        self.fd = fd
        raw = p.raw
        self.sq_entries, self.cq_entries = struct.unpack_from("II", raw, 0)
        sq = struct.unpack_from("IIIIIIII", raw, 40)
        cq = struct.unpack_from("IIIIIIII", raw, 80)
        self.sq_head, self.sq_tail, self.sq_mask, _, _, _, self.sq_array, _ = sq
        self.cq_head, self.cq_tail, self.cq_mask, _, _, self.cq_cqes, _, _ = cq
        self.sqring = mmap.mmap(fd, self.sq_array + self.sq_entries * 4, offset=OFF_SQ_RING)
        self.cqring = mmap.mmap(fd, self.cq_cqes + self.cq_entries * 16, offset=OFF_CQ_RING)
        self.sqes = mmap.mmap(fd, self.sq_entries * 64, offset=OFF_SQES)
        self.sq_mask = struct.unpack_from("I", self.sqring, self.sq_mask)[0]  # the offsets' values
        self.cq_mask = struct.unpack_from("I", self.cqring, self.cq_mask)[0]
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        arg = ctypes.c_int(self.efd)
        if libc.syscall(REGISTER, fd, REGISTER_EVENTFD, ctypes.byref(arg), 1) < 0:
            raise OSError(ctypes.get_errno(), "register eventfd")
        self.waiters: dict[int, asyncio.Future[int]] = {}
        self.next = 1

    def _push(self, sqe: bytes) -> None:
        tail = struct.unpack_from("I", self.sqring, self.sq_tail)[0]
        i = tail & self.sq_mask
        self.sqes[i * 64 : i * 64 + 64] = sqe
        struct.pack_into("I", self.sqring, self.sq_array + i * 4, i)
        struct.pack_into("I", self.sqring, self.sq_tail, tail + 1)

    def write_dsync(
        self, fd: int, addr: int, n: int, off: int, linked_fsync: bool, enter: bool = True
    ) -> asyncio.Future[int]:
        ud = self.next
        self.next += 1
        flags = IOSQE_IO_LINK if linked_fsync else 0
        self._push(
            struct.pack(
                "BBHiQQIIQHHiQQ", OP_WRITE, flags, 0, fd, off, addr, n, 0, 0 if linked_fsync else ud, 0, 0, 0, 0, 0
            )
        )
        count = 1
        if linked_fsync:
            self._push(struct.pack("BBHiQQIIQHHiQQ", OP_FSYNC, 0, 0, fd, 0, 0, 0, FSYNC_DATASYNC, ud, 0, 0, 0, 0, 0))
            count = 2
        fut = asyncio.get_running_loop().create_future()
        self.waiters[ud] = fut
        if enter and libc.syscall(ENTER, self.fd, count, 0, 0, None, 0) < 0:
            raise OSError(ctypes.get_errno(), "io_uring_enter")
        return fut

    def reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.efd)
        head = struct.unpack_from("I", self.cqring, self.cq_head)[0]
        tail = struct.unpack_from("I", self.cqring, self.cq_tail)[0]
        while head != tail:
            ud, res, _ = struct.unpack_from("QiI", self.cqring, self.cq_cqes + (head & self.cq_mask) * 16)
            head += 1
            fut = self.waiters.pop(ud, None)
            if fut is not None and not fut.done():
                fut.set_result(res)
        struct.pack_into("I", self.cqring, self.cq_head, head)


async def main(n: int, path: str) -> None:
    data = b"x" * 100
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.pwrite(fd, b"\0" * 4096, 0)
    os.fsync(fd)
    buf = ctypes.create_string_buffer(data)
    addr = ctypes.addressof(buf)
    ring = Ring()
    loop = asyncio.get_running_loop()
    loop.add_reader(ring.efd, ring.reap)

    def raw() -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
            out.append(time.perf_counter() - t0)
        return out

    async def hop() -> list[float]:
        def w() -> None:
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)

        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await asyncio.to_thread(w)
            out.append(time.perf_counter() - t0)
        return out

    async def uring() -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            res = await ring.write_dsync(fd, addr, len(data), 0, linked_fsync=True)
            assert res == 0, res
            out.append(time.perf_counter() - t0)
        return out

    def uring_blocking() -> list[float]:  # submitted and waited for in one syscall: io_uring's own path
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            fut = ring.write_dsync(fd, addr, len(data), 0, linked_fsync=True, enter=False)
            libc.syscall(ENTER, ring.fd, 2, 2, 1, None, 0)
            ring.reap()
            assert fut.done()
            out.append(time.perf_counter() - t0)
        return out

    rows: dict[str, list[float]] = {"raw": [], "hop": [], "uring": [], "uring_blocking": []}
    for _ in range(5):  # interleaved rounds
        rows["raw"] += raw()
        rows["hop"] += await hop()
        rows["uring"] += await uring()
        rows["uring_blocking"] += uring_blocking()
    f = statistics.median(rows["raw"])
    for k, v in rows.items():
        v.sort()
        p50, p99 = statistics.median(v), v[int(len(v) * 0.99)]
        print(f"{k:14s} p50 {p50 * 1e6:7.1f} us  p99 {p99 * 1e6:7.1f} us  {p50 / f:.2f}x raw fsync p50")


if __name__ == "__main__":
    asyncio.run(
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 400, sys.argv[2] if len(sys.argv) > 2 else "/tmp/uring/f.bin")
    )
