"""Reading a file on the host that should be a regular file, safely, and replacing one atomically (standard library
only; runs on the target).

Reading is used by host_files (the file it is about to replace, for the comparison and the diff) and llm_host_lock
(the lock file): a symbolic link is never followed (it would show another file, perhaps a root-only one, as this
one's content) and a FIFO is never waited on (opening one for reading blocks until a writer comes). Replacing is used
by llm_host_lock (the lock) and llm_host_state (the host's record).
"""
from __future__ import annotations

import errno
import os
import secrets
import stat

KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFile(Exception):
    """The path holds something other than a regular file; `kind` says what ("a symbolic link", "a FIFO", ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file of this st_mode is, as a message names it."""
    return next((name for test, name in KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "unknown")


def read_regular(path: str, dir_fd: int | None = None) -> tuple[bytes, os.stat_result]:
    """The whole content of the regular file `path` (relative to dir_fd when given) and its stat. Raises
    FileNotFoundError (or NotADirectoryError) when there is none, NotRegularFile for anything else: checked before
    it is opened (a device is never opened) and again on the open file (O_NOFOLLOW, O_NONBLOCK: a path swapped
    meanwhile for a link or a FIFO neither is followed nor blocks)."""
    info = os.lstat(path, dir_fd=dir_fd)
    if not stat.S_ISREG(info.st_mode):
        raise NotRegularFile(kind_of(info.st_mode))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile("a symbolic link") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(kind_of(info.st_mode))
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), info


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd` and sync it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def replace_file(dir_fd: int, name: str, data: bytes) -> None:
    """Replace `name` in the directory `dir_fd` atomically, mode 0600: a temporary file beside it, synced, renamed
    over it, and the directory synced (a reader sees the old file or the new one, never a part)."""
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.fchmod(fd, 0o600)
        write_all(fd, data)
        os.close(fd)
        fd = -1
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    os.fsync(dir_fd)
