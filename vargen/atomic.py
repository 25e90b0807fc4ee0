"""Atomic writes: a file or a folder is replaced whole or not at all, whatever kills the writer.

:func:`atomic_write` writes a temporary file and renames it; :func:`atomic_dir` swaps a finished
temporary folder with the old one in one ``renameat2(RENAME_EXCHANGE)`` (Linux), so the final path
always holds the old or the new save (``tests/test_reliability_atomic.py`` kills a save between
every pair of file-system steps). Ground floor: imports nothing of vargen.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Write through a temporary file in the same folder, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # After writing: mkstemp's 0600 would survive the rename, and some writers (safetensors)
        # recreate the file with 0600 themselves.
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_dir(path: Path, write: Callable[[Path], Any]) -> Path:
    """Fill a temporary sibling folder with ``write(tmp)``, then put it at ``path`` so that a kill at
    any moment leaves the old or the new folder there, whole: an existing ``path`` is swapped with
    the new folder in one ``renameat2(RENAME_EXCHANGE)`` and removed afterwards; a new ``path`` is
    one rename. Where the swap is unsupported the old folder is renamed aside first and
    :func:`recover_dir` (run by the next save or load) puts it back if the kill came in between.
    Leftovers of killed saves (hidden ``.NAME.<pid>.*`` siblings of dead processes) are removed by the
    next save. The caller decides whether ``path`` may be replaced."""
    import shutil
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_suffix(".old")
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
        if not path.exists():
            os.rename(tmp, path)
        elif not _exchange(tmp, path):  # tmp now holds the old folder
            os.rename(path, old)
            os.rename(tmp, path)
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    return path


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import errno
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(path: Path) -> None:
    """Undo what a killed :func:`atomic_dir` left: put the old folder back at ``path`` if the kill
    came between the two renames of the fallback, and remove dead processes' temporary siblings."""
    import re
    import shutil
    path = Path(path)
    if not path.parent.is_dir():
        return
    pattern = re.compile(re.escape(f".{path.name}.") + r"(\d+)\.[^.]+\.(tmp|old)$")
    for sibling in sorted(path.parent.iterdir(), key=lambda p: p.suffix != ".old"):
        found = pattern.match(sibling.name)
        if not found or _pid_alive(int(found.group(1))):
            continue
        try:
            if found.group(2) == "old" and not path.exists():
                os.rename(sibling, path)
            else:
                shutil.rmtree(sibling)
        except OSError:
            pass  # another process got there first, or the folder is read-only: nothing lost
