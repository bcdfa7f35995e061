"""One run at a time per output.dir: an advisory lock on output.dir/.onnxcam.lock, held for the whole run.

The operating system drops the lock when the process that holds it ends, however it ends (Ctrl-C,
kill -9, a crash), and a network filesystem's lock manager drops it when it loses the node, so a dead run
never blocks the next one. The file itself only says who holds the lock (host, pid, since when), for the
message a second run prints; it stays in place between runs, empty, so no run can lock a file that
another is about to replace.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from onnxcam.runner.outputs.files import OutputDirError

LOCK_NAME = ".onnxcam.lock"

HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)  # what a lock held by another process reports
LOCKED_BYTE = 1 << 20  # Windows locks a byte range; one past the note, so that others can still read the note

try:
    import fcntl

    def _try_lock(fd: int) -> None:
        # flock locks an open file (two runs in one process exclude each other on a local disk; on NFS, Linux maps
        # flock onto the server's per-process locks)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)
except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, LOCKED_BYTE, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        who = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {who['pid']} on {who['host']}, running since {who['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another onnxcam run, starting"


class RunLock:
    """`with RunLock(folder):` holds the folder's lock, or raises OutputDirError naming the holder."""

    def __init__(self, folder: Path):
        self.folder, self.path = folder, folder / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputDirError(f"output.dir: {self.folder}: cannot create {LOCK_NAME} ({error.strerror}); "
                                 "pick a folder you can write to") from None
        try:
            _try_lock(fd)
        except OSError as error:
            holder = _holder(fd) if error.errno in HELD else None
            os.close(fd)
            if holder is None:
                raise OutputDirError(f"output.dir: {self.folder}: cannot lock {LOCK_NAME} ({error.strerror}); put "
                                     "output.dir on a file system with file locks (a local disk, or NFS with its "
                                     "lock service)") from None
            raise OutputDirError(f"output.dir: {self.folder} is in use by {holder}; wait for that run to end, or "
                                 "pick another output.dir") from None
        self.fd = fd
        since = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": since}).encode())
        except OSError as error:
            self.__exit__()
            raise OutputDirError(f"output.dir: {self.folder}: cannot write {LOCK_NAME} ({error.strerror}); free "
                                 "space or pick a folder you can write to") from None
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            _unlock(self.fd)
            os.close(self.fd)
            self.fd = None
