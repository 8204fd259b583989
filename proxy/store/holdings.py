"""One process's holdings in the shared counters (proxy.store.counters): per record index,
(hash, requests in flight, reserved micro-USD), in the process's own mmap'd file. Only that
process writes it (no locks); the supervisor reads it to give back exactly what a dead worker
held."""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

from proxy.store.files import open_private, private_dir

HOLD = struct.Struct("<Qqq")      # hash, in flight, reserved micro-USD
FIRST_SIZE = HOLD.size * 4096


class Holdings:
    def __init__(self, path: Path) -> None:
        private_dir(path.parent)
        self.path = path
        self._fd = open_private(path, os.O_RDWR | os.O_TRUNC)
        self._mm: mmap.mmap | None = None
        self._size = 0

    def add(self, index: int, h: int, inflight: int, reserve: int) -> None:
        """Add to what this process holds in record `index` (tagged `h`; 0 keeps the tag)."""
        pos = index * HOLD.size
        if pos + HOLD.size > self._size:
            self._grow(pos + HOLD.size)
        tag, n, micro = HOLD.unpack_from(self._mm, pos)
        HOLD.pack_into(self._mm, pos, h or tag, n + inflight, micro + reserve)

    def _grow(self, need: int) -> None:
        size = max(need, 2 * self._size, FIRST_SIZE)
        os.ftruncate(self._fd, size)
        if self._mm is not None:
            self._mm.close()
        self._mm = mmap.mmap(self._fd, size)
        self._size = size

    @staticmethod
    def read(path: Path) -> list[tuple[int, int, int, int]]:
        """(record index, hash, in flight, reserved) of every record with something held."""
        data = path.read_bytes()
        whole = data[:len(data) - len(data) % HOLD.size]
        return [(i, h, n, micro) for i, (h, n, micro) in enumerate(HOLD.iter_unpack(whole)) if h and (n or micro)]

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        os.close(self._fd)
