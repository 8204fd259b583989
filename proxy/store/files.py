"""Files under data_dir hold key hashes, the ledger, cached prompts and answers: directories are
created 0700 and files 0600 whatever the process umask (outside systemd it is usually 022).
SQLite gives a database's -wal, -shm and -journal files the database file's mode.

An existing directory keeps its mode (the operator may have chosen it); a file of ours that
group or others can read is tightened to 0600 when it is opened."""
from __future__ import annotations

import os
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class DataDirError(Exception):
    """data_dir cannot be used (read-only, not a directory, ...); the message names the path."""


def private_dir(path: str | Path) -> Path:
    """`path` as a directory, it and its missing parents created 0700."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(d, DIR_MODE)        # the umask may have taken more than group and other bits
    return path


def open_private(path: str | Path, flags: int = os.O_RDWR) -> int:
    """os.open(path, flags | O_CREAT) with the file 0600."""
    fd = os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def private_file(path: str | Path) -> Path:
    """`path` exists and is 0600 (created empty if missing)."""
    os.close(open_private(path, os.O_RDONLY))
    return Path(path)


def private_db(path: str | Path) -> Path:
    """A SQLite database file, created empty (SQLite takes it as a new database) 0600 before
    SQLite opens it, so that SQLite's side files follow; side files left by an older, looser
    version are tightened too."""
    private_dir(Path(path).parent)
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = f"{path}{suffix}"
        if os.path.exists(side):
            private_file(side)
    return Path(path)


def write_private(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` (created or truncated), 0600."""
    fd = open_private(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def check_data_dir(path: str | Path) -> Path:
    """Create data_dir if needed and prove a file can be created in it; DataDirError otherwise."""
    path = Path(path).absolute()
    probe = path / f".write-test-{os.getpid()}"
    try:
        private_dir(path)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        os.unlink(probe)
    except OSError as exc:
        raise DataDirError(f"data_dir {path} is not usable: {exc.strerror or exc}") from exc
    return path
