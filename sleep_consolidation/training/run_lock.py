"""A pid lock file on a directory, so that two sweeps never train the same runs at once
(`sweep.lock`), and two training processes never write one run directory (`train.lock`,
held by `train.train_and_evaluate` and so by every way of training a run: a sweep's
worker, the command line, a notebook)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

LOCK_FILE = "sweep.lock"
TRAIN_LOCK_FILE = "train.lock"


# How long an empty or torn lock file counts as being written by its creator (a holder
# writes it within microseconds of creating it); older, it was left by a crash.
_UNWRITTEN_GRACE_S = 10.0

# The lock files this process holds (absolute paths): `hold_run` nests within them.
_HELD: set[str] = set()


class LockedError(RuntimeError):
    """Another live process holds the lock."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class DirLock:
    """`<directory>/<name>` (default sweep.lock) holding {"pid", "host", "since"} while its
    holder runs (`what` names the holder in the refusal: "sweep", "training run").

    A lock whose pid is dead on this host is stale and taken over. A lock written on
    another host cannot be checked from here, so it is refused with the file to delete.
    """

    def __init__(self, directory: str, name: str = LOCK_FILE, what: str = "sweep"):
        self.path = os.path.join(os.fspath(directory), name)
        self.what = what
        self._held = False

    def holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        """Raises:
        LockedError: a live process (or one on another host) holds the lock.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_stale(self.holder())
                try:
                    os.unlink(self.path)  # stale: take it over
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            # Two takers of one stale lock: only the last writer finds its own pid here.
            if (self.holder() or {}).get("pid") == me["pid"]:
                self._held = True
                _HELD.add(os.path.abspath(self.path))
                return
        raise LockedError(f"could not take the lock {self.path} (another {self.what} is starting)")

    def _check_stale(self, holder: dict | None) -> None:
        if holder is None:  # torn or empty: its writer is writing now, or died mid-write
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return  # gone meanwhile: the next try creates it
            # Taken over at once, a lock just created and not yet written would be deleted
            # after its owner had checked it holds it: both would run.
            if age < _UNWRITTEN_GRACE_S:
                raise LockedError(
                    f"{self.path} is empty or partly written ({age:.1f} s old): another "
                    f"{self.what} is starting on this directory; try again in a few seconds "
                    "(a lock left empty by a crash is taken over after "
                    f"{_UNWRITTEN_GRACE_S:.0f} s)"
                )
            return
        pid, host = int(holder.get("pid", -1)), holder.get("host")
        if host not in (None, socket.gethostname()):
            raise LockedError(
                f"{self.path} is held by pid {pid} on host {host}, which cannot be checked "
                f"from here; if no {self.what} runs there, delete the file"
            )
        if pid == os.getpid() or pid_alive(pid):
            since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
            raise LockedError(
                f"another {self.what} (pid {pid}, since {since}) is running on this directory "
                f"({self.path}); wait for it to finish or stop it"
            )

    def release(self) -> None:
        if self._held and (self.holder() or {}).get("pid") == os.getpid():
            os.unlink(self.path)
        if self._held:
            _HELD.discard(os.path.abspath(self.path))
        self._held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def hold_run(workdir: str, *, main: bool = True):
    """Holds `<workdir>/train.lock` for the block: another process that would train the
    same run directory is refused (LockedError naming the pid); a stale lock (dead pid) is
    taken over. Nested holds in one process (the command line's, then the library's) share
    the outer lock. `main=False` (a multi-host run's other processes) holds nothing."""
    from sleep_consolidation.training.run_dir import io_error  # run_dir imports the whole model

    lock = DirLock(workdir, TRAIN_LOCK_FILE, what="training run")
    if not main or os.path.abspath(lock.path) in _HELD:
        yield
        return
    try:
        lock.acquire()
    except OSError as e:  # the lock is the run's first write: an unwritable workdir fails here
        raise io_error(e, workdir) from e
    try:
        yield
    finally:
        lock.release()
