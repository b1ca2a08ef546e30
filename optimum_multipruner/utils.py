"""Small shared helpers: the library logger, the stack level of a user's line for warnings, atomic file writes, a
callback run when a module is imported, and a file of a checkpoint folder or Hub repository."""

from __future__ import annotations

import glob
import importlib.abc
import inspect
import json
import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

_LIBRARY_LOGGER = "optimum_multipruner"


def get_logger(name: str) -> logging.Logger:
    """Logger under the library's namespace (`optimum_multipruner.*`)."""
    if not name.startswith(_LIBRARY_LOGGER):
        name = f"{_LIBRARY_LOGGER}.{name}"
    return logging.getLogger(name)


def user_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` made by the caller name the first line outside this package,
    the user's, however many of the package's functions lie between (as pandas' `find_stack_level`)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = inspect.currentframe().f_back, 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def read_json(path: Union[str, os.PathLike]) -> Any:
    """Parse a JSON file; `ValueError` saying it is corrupted or truncated when it does not parse."""
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); it is corrupted or truncated.") from error


def _default_mode(directory: bool) -> int:
    """Permissions a plain `open`/`mkdir` would give under the current umask (temp files start private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_file(path: Union[str, os.PathLike]) -> Iterator[str]:
    """Yield a temporary file path in `path`'s folder; on success it replaces `path` (atomic rename), on failure it
    is removed and `path` is intact."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_temporary_files(path: Union[str, os.PathLike]) -> list[str]:
    """Delete the temporary files that `atomic_file(path)` left behind when a process writing `path` was killed
    (`.tmp-<8 random characters><name>` next to it, as `tempfile.mkstemp` names them); returns their paths. Call it
    before writing `path` again."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = ".tmp-" + "?" * 8 + glob.escape(os.path.basename(path))
    stale = glob.glob(os.path.join(glob.escape(directory), pattern))
    for leftover in stale:
        os.unlink(leftover)
        get_logger(__name__).warning("Removed %s, left by an interrupted write of %s.", leftover, path)
    return stale


def atomic_write_text(path: Union[str, os.PathLike], text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def check_output_file(path: Union[str, os.PathLike, None], overwrite: bool) -> None:
    """Refuse an output file that exists (unless `overwrite`), a directory in its place, or a missing folder; `None`
    (an optional output not asked for) passes.

    Only checks: nothing is created.
    """
    if path is None:
        return
    if os.path.isdir(path):
        raise IsADirectoryError(f"The output path {path} is a directory; give a file name.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"The output file {path} already exists. Pass `overwrite=True` (`--overwrite` on the command line) to "
            "replace it, or choose another file."
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"The folder of {path} does not exist; create {folder} first.")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"Cannot write the output file {path}: {folder} is not writable.")


def check_output_dir(path: Union[str, os.PathLike], overwrite: bool) -> None:
    """Refuse to write into an existing output unless `overwrite`; a file in the way is always an error.

    Only checks: nothing is created. The nearest existing ancestor folder must be writable.
    """
    if os.path.isfile(path):
        raise FileExistsError(f"The output path {path} is a file; give a directory path.")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise FileExistsError(
            f"The output directory {path} already exists and is not empty. Pass `overwrite=True` (`--overwrite` on the "
            "command line) to replace it, or choose another directory."
        )
    ancestor = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(ancestor):
        if os.path.exists(ancestor):
            raise FileExistsError(f"Cannot create the output directory {path}: {ancestor} is a file.")
        ancestor = os.path.dirname(ancestor)
    if not os.access(ancestor, os.W_OK):
        raise PermissionError(f"Cannot write the output directory {path}: {ancestor} is not writable.")


@contextmanager
def atomic_directory(path: Union[str, os.PathLike], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary sibling folder; on success it replaces `path`, on failure it is removed and `path` is intact.

    An existing `path` is moved aside, the new folder renamed into place, then the old one deleted; if that rename
    fails, the old folder is put back. (Only a hard crash between the two renames leaves the old folder under its
    hidden `.<name>.old-*` name.)
    """
    check_output_dir(path, overwrite)
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.tmp-")
    os.chmod(tmp, _default_mode(directory=True))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if os.path.exists(path):
        backup = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.old-")
        os.rmdir(backup)
        os.replace(path, backup)
    try:
        os.replace(tmp, path)
    except BaseException:
        if backup is not None:
            os.replace(backup, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


class _CallAfterExec(importlib.abc.Loader):
    """Runs the real loader of a module, then the callbacks."""

    def __init__(self, loader: importlib.abc.Loader, callbacks: list[Callable[[], None]]) -> None:
        self.loader, self.callbacks = loader, callbacks

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        for callback in self.callbacks:
            callback()


class _ImportWatcher(importlib.abc.MetaPathFinder):
    """One-shot `sys.meta_path` finder: wraps the loader of module `name`, then removes itself."""

    def __init__(self, name: str) -> None:
        self.name, self.callbacks = name, []

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _CallAfterExec(spec.loader, self.callbacks)
                return spec
        return None


def call_after_import(name: str, callback: Callable[[], None]) -> None:
    """Call `callback` once module `name` has been imported: now if it already is, else right after its import
    (at no import cost before that)."""
    if name in sys.modules:
        callback()
        return
    watcher = next((f for f in sys.meta_path if isinstance(f, _ImportWatcher) and f.name == name), None)
    if watcher is None:
        watcher = _ImportWatcher(name)
        sys.meta_path.insert(0, watcher)
    watcher.callbacks.append(callback)


def source_file(source: str, name: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """`name` in a checkpoint folder or Hub repo, or `None` when it has none (or it is not cached, offline)."""
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.isfile(path) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(source, name, cache_dir=cache_dir)
    except EntryNotFoundError:
        return None
