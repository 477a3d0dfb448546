"""Per-user directories of the backend, following the XDG base directories.

The daemon and the CLI both use these functions, so setting ``XDG_CONFIG_HOME``,
``XDG_DATA_HOME`` and ``XDG_RUNTIME_DIR`` moves everything (tests rely on it).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import platformdirs

from libervia.backend.core import constants as C


def config_dir() -> Path:
    """Return the directory of the config file (not created here)."""
    return Path(platformdirs.user_config_dir(C.APP_NAME, appauthor=False))


def config_file() -> Path:
    """Return the path of the INI config file."""
    return config_dir() / C.CONFIG_FILE_NAME


def data_dir(create: bool = False) -> Path:
    """Return the directory holding the default SQLite database."""
    path = Path(platformdirs.user_data_dir(C.APP_NAME, appauthor=False))
    if create:
        # Path.mkdir(parents=True) would give the missing parents the
        # umask's mode: each missing folder is made private instead.
        missing = []
        folder = path
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            folder.mkdir(mode=0o700, exist_ok=True)
    return path


def runtime_dir(create: bool = False) -> Path:
    """Return the per-user directory holding the PID file and the bridge socket.

    It is ``$XDG_RUNTIME_DIR/libervia`` when that variable is set (or
    ``/run/user/UID`` exists), else a ``libervia-UID`` folder in the temporary
    directory. With ``create``, the folder is made with mode 0700 and checked
    to belong to the current user, because the bridge socket inside it gives
    full control over the user's accounts.
    """
    uid = os.getuid()
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        path = Path(base) / C.APP_NAME
    elif Path(f"/run/user/{uid}").is_dir():
        path = Path(f"/run/user/{uid}") / C.APP_NAME
    else:
        path = Path(tempfile.gettempdir()) / f"{C.APP_NAME}-{uid}"

    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.stat()
        if info.st_uid != uid:
            raise PermissionError(
                f"runtime directory {path} belongs to uid {info.st_uid}, not to "
                f"uid {uid}: remove it or set XDG_RUNTIME_DIR to a private folder"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            path.chmod(0o700)
    return path


def bridge_socket() -> Path:
    """Return the path of the bridge's Unix socket."""
    return runtime_dir() / C.BRIDGE_SOCKET_NAME


def pid_file() -> Path:
    """Return the path of the daemon's PID file."""
    return runtime_dir() / C.PID_FILE_NAME


def log_file() -> Path:
    """Return the path of the log file written by a daemon started in the background."""
    return data_dir() / C.LOG_FILE_NAME
