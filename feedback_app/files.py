"""Files the app writes (database, backups, exports): private modes whatever the umask, and OS errors
turned into one-line ``UserError``s that name the path.

The database and its backups hold password hashes and every reviewer's rankings: owner only (0600),
like ``secret.key``. Exports are read by training jobs, possibly under another account of the same
group: 0640 files in 0750 folders. Modes are set with ``chmod`` after creation, so a permissive umask
(0022 gives 0644) cannot widen them.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from rlhf.errors import UserError

_log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
SHARED_FILE = 0o640
SHARED_DIR = 0o750


def path_error(path: str | os.PathLike, exc: OSError, doing: str = "cannot write") -> UserError:
    """``PATH: cannot write: Not a directory`` for an ``OSError`` met at ``path``."""
    return UserError(f"{path}: {doing}: {exc.strerror or exc}")


def prepare_parent(path: str | os.PathLike) -> Path:
    """Create the folder that will hold ``path`` (and its parents); a failure names the path."""
    path = Path(path)
    for folder in (path.parent, *path.parent.parents):  # the nearest existing one must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise UserError(f"{path}: cannot create its folder: {folder} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise path_error(path, exc, "cannot create its folder") from None
    return path


def create_private_file(path: str | os.PathLike, mode: int = PRIVATE_FILE) -> bool:
    """Create ``path`` empty with ``mode`` if it does not exist; True when this call created it.

    An empty file is a valid empty SQLite database, and SQLite gives its -wal and -shm files the
    database file's mode, so creating the file here first keeps all three private."""
    path = prepare_parent(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    except OSError as exc:
        raise path_error(path, exc, "cannot create") from None
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits we want, never added: set exactly
    finally:
        os.close(fd)
    return True


def tighten_private(*paths: str | os.PathLike, mode: int = PRIVATE_FILE) -> list[Path]:
    """Narrow existing files to ``mode`` (a database, WAL or key made by older code, or under a
    permissive umask, may be 0644); returns the paths changed.

    Only files this account owns are changed; a file owned by someone else, or one that cannot be
    changed, is logged as a warning and left as it is: opening the store must not fail over it."""
    changed = []
    for path in map(Path, paths):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            _log.warning("%s: cannot check its permissions: %s", path, exc.strerror or exc)
            continue
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) & ~mode == 0:
            continue  # already as narrow (or narrower)
        if info.st_uid != os.geteuid():
            _log.warning("%s is readable by others (mode %o) and owned by another account; its owner should "
                         "run: chmod %o %s", path, stat.S_IMODE(info.st_mode), mode, path)
            continue
        try:
            os.chmod(path, stat.S_IMODE(info.st_mode) & mode)
        except OSError as exc:
            _log.warning("%s: cannot narrow its permissions to %o: %s", path, mode, exc.strerror or exc)
            continue
        _log.warning("%s was readable by others (mode %o); narrowed to %o", path, stat.S_IMODE(info.st_mode),
                     stat.S_IMODE(info.st_mode) & mode)
        changed.append(path)
    return changed


def restrict_tree(root: str | os.PathLike, file_mode: int = SHARED_FILE, dir_mode: int = SHARED_DIR) -> None:
    """Set ``file_mode`` on every file and ``dir_mode`` on every folder under ``root`` (root included)."""
    root = Path(root)
    os.chmod(root, dir_mode)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), dir_mode)
        for name in files:
            os.chmod(os.path.join(folder, name), file_mode)
