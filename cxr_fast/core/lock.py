"""A folder claimed by one process at a time: two trainings started together into one --out cannot both write it.

    with claim_folder(run_dir, "training"):
        ...   # another process claiming run_dir now gets a one-line CxrError

The claim is an exclusive `flock` on FOLDER/.cxr_fast.lock (the file holds the owner's pid, for the message). The
operating system drops the lock when its process ends, however it ends (SIGKILL too), so a dead run never leaves
the folder stuck; the file itself may stay and means nothing then. Where `fcntl` does not exist (Windows) nothing is
claimed.
"""
import contextlib
import os
import time
from pathlib import Path

from .errors import CxrError

LOCK_NAME = ".cxr_fast.lock"

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None


@contextlib.contextmanager
def claim_folder(folder, what="run"):
    "Hold FOLDER (created if needed) for this process; a CxrError naming the holder when another process holds it."
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield folder
        return
    with open(folder / LOCK_NAME, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise CxrError(f"{folder} is in use by another {what} ({holder}); wait for it to finish, or give another "
                           f"--out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
