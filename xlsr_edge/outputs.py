"""Writing outputs without ever destroying a user's files: the one mechanism every writer uses.

Rules (issue 14):

* An existing output is only replaced when this tool wrote it (each writer describes its own output with an
  `OutputKind`: a bundle has bundle.json, a corpus synth.json, ...) or when it is an empty folder. The checkpoint
  being read, a folder inside it (or holding it), a plain file, `.`, `/` and the home directory are refused
  before any work starts, and nothing is touched.
* New output is written into a temp folder next to the target, `.NAME.xlsr-tmp-PID`, and swapped in at the
  end: on Linux with renameat2(RENAME_EXCHANGE), so at every instant either the old or the new complete
  output is at the target. Without it, the old output is renamed aside to `.NAME.xlsr-old-PID` first, and the
  next run puts it back if a kill left the target missing.
* Creating a target that is absent (or an empty folder) is one atomic step, renameat2(RENAME_NOREPLACE)
  (without it: claim the name with mkdir, then rename onto the claim): of several runs writing the same new
  `-o` at once exactly one wins; the others get the "already exists" error and leave nothing (issue 23).
* Leftovers of a dead process (its PID no longer runs) are removed by the next run on the same output, with
  one line on stderr. A leftover is only removed when it carries our marker file, is an output of the same
  kind, or is empty: a user's folder that merely has a similar name is never touched.
* SIGTERM and SIGHUP interrupt a write like Ctrl-C (KeyboardInterrupt), so the temp folder is cleaned up;
  signals are held back while the swap itself runs.

Test hooks (environment): XLSR_EDGE_TEST_KILL_AT=STEP kills the process with SIGKILL at that step of a write
(`KILL_STEPS`); XLSR_EDGE_TEST_NO_EXCHANGE=1 takes the fallback paths without renameat2.

Standard library only: both halves of the package import it.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from xlsr_edge.constants import BUNDLE_JSON
from xlsr_edge.errors import OutputError, XlsrEdgeError
from xlsr_edge.interrupts import critical, interrupts_raise

ENV_KILL_AT = "XLSR_EDGE_TEST_KILL_AT"
ENV_NO_EXCHANGE = "XLSR_EDGE_TEST_NO_EXCHANGE"
# Where a write can be killed, in order (exchanged: renameat2 path; old-aside/new-in: fallback path).
KILL_STEPS = ("created", "written", "ready", "exchanged", "old-aside", "new-in", "removing")

# in every temp folder until it is complete (a dotfile: bundle hashing skips it)
MARKER = ".xlsr-edge-writing"
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.xlsr-(?P<stage>tmp|old)-(?P<pid>\d+)(?:-\d+)?$")
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
logger = logging.getLogger(__name__)
_AT_FDCWD = -100


@dataclass(frozen=True)
class OutputKind:
    """What one writer produces, so that only its own earlier output is ever replaced."""

    what: str  # "bundle", "fine-tuning output", ... (messages)
    writer: str  # the command that writes it (messages)
    is_ours: Callable[[Path], bool]  # a folder holding a complete output of this kind


def _has_bundle_json(folder: Path) -> bool:
    try:
        data = json.loads((folder / BUNDLE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data


BUNDLE = OutputKind("bundle", "export-xlsr", _has_bundle_json)


def has_file(name: str) -> Callable[[Path], bool]:
    """is_ours for outputs recognised by a file only this writer puts there."""
    return lambda folder: (folder / name).is_file()


def only_files(names: Sequence[str]) -> Callable[[Path], bool]:
    """is_ours for outputs that hold nothing but these files (at least one of them)."""
    allowed = set(names)

    def check(folder: Path) -> bool:
        try:
            entries = list(folder.iterdir())
        except OSError:
            return False
        return bool(entries) and all(p.name in allowed and p.is_file() for p in entries)

    return check


# -- leftovers of interrupted runs ---------------------------------------------------------------------------

_ACTIVE: set[str] = set()  # temp paths this process is writing right now


def _pid_alive(pid: int, path: Path) -> bool:
    if pid == os.getpid():
        return os.path.abspath(path) in _ACTIVE  # our PID reused from a dead run: only live temps count
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a PID at all: leave it alone
    return True


def _marker_pid(folder: Path) -> int | None:
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("host") != socket.gethostname():
        return None  # written on another machine (shared disk): its PID means nothing here
    pid = data.get("pid")
    return pid if isinstance(pid, int) else None


def _has_content(path: Path) -> bool:
    """Something at `path` other than an empty folder. A folder removed while it is read counts as absent (a
    racer may remove an empty target folder at any moment: that must not read as "holds files")."""
    try:
        if path.is_symlink() or not path.is_dir():
            return os.path.lexists(path)
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except FileNotFoundError:
        return False
    except OSError:
        return True


def _is_empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def _removable(path: Path, kind: OutputKind | None, pid: int) -> bool:
    """Did this tool create `path`? Our marker with the same PID, a complete output of the kind, or empty."""
    if path.is_symlink() or not path.is_dir():
        return False  # every temp this tool makes is a folder
    return _marker_pid(path) == pid or _is_empty_dir(path) or (kind is not None and kind.is_ours(path))


def _say(msg: str) -> None:
    logger.warning("%s", msg)  # touches the user's disk: shown also with --quiet


def recover(target: Path, kind: OutputKind | None = None) -> list[str]:
    """Clean up after runs on `target` that were killed: put a moved-aside old output back when the target is
    missing, remove their temp folders/files. Returns the messages it printed (one line each)."""
    target = Path(target)
    parent = target.parent
    try:
        entries = sorted(parent.iterdir()) if parent.is_dir() else []
    except OSError:
        return []
    said: list[str] = []
    dead = []
    for p in entries:
        m = _LEFTOVER.match(p.name)
        if m and m["name"] == target.name and not _pid_alive(int(m["pid"]), p):
            dead.append((p, m["stage"], int(m["pid"])))
    for p, stage, pid in dead:
        if stage == "old" and not os.path.lexists(target) and p.is_dir() and not p.is_symlink():
            os.rename(p, target)
            said.append(
                f"restored {target}: a run killed while replacing it (process {pid}) had moved it aside"
            )
            _say(said[-1])
    for p, _stage, pid in dead:
        if os.path.lexists(p) and _removable(p, kind, pid):
            _remove(p, pid)
            said.append(f"removed {p}: left behind by an interrupted run (process {pid})")
            _say(said[-1])
    return said


def _remove(path: Path, pid: int | None = None) -> None:
    """Remove a temp folder of process `pid`; the marker goes last, so a kill halfway leaves it recognisable."""
    import shutil

    _write_marker(path, pid)
    for child in path.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
        _kill_point("removing")
    (path / MARKER).unlink(missing_ok=True)
    path.rmdir()


# -- refusing before any work --------------------------------------------------------------------------------


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_output(
    target: str | os.PathLike,
    kind: OutputKind,
    *,
    overwrite: bool,
    flag: str = "-o",
    protect: Sequence[tuple[str, str | os.PathLike]] = (),
    overwrite_flag: str | None = "--overwrite",
) -> Path:
    """Clean up leftovers of killed runs, then raise XlsrEdgeError unless writing `target` is safe.

    Safe: it does not exist, is an empty folder, or is an output of `kind` and `overwrite` is set. `protect`
    holds (label, path) pairs the output must neither be, lie inside, nor contain (e.g. the checkpoint read).
    Call it before any work; the writers call it again right before they swap the new output in.
    """
    target = Path(target)
    shown = f"{flag} {target}"
    real = Path(os.path.realpath(target))
    cwd = Path(os.path.realpath(Path.cwd()))
    if real == Path(real.anchor):
        raise XlsrEdgeError(f"{shown}: refusing to write over the root folder; give a new folder")
    if real == Path(os.path.realpath(Path.home())):
        raise XlsrEdgeError(f"{shown}: refusing to write over the home folder; give a new folder")
    if _contains(real, cwd):
        what = "the current folder" if real == cwd else "a folder that holds the current folder"
        raise XlsrEdgeError(f"{shown} is {what}; give a new folder, e.g. {flag} {target / 'out'}")
    for label, path in protect:
        other = Path(os.path.realpath(path))
        if real == other:
            raise XlsrEdgeError(f"{shown} is {label} itself; write to another folder")
        if _contains(other, real):
            raise XlsrEdgeError(f"{shown} lies inside {label} {path}; write to a folder outside it")
        if _contains(real, other):
            raise XlsrEdgeError(f"{shown} holds {label} {path}; write to another folder")
    recover(target, kind)
    if target.is_symlink():
        raise XlsrEdgeError(f"{shown} is a symbolic link; give the folder it points to, or a new folder")
    if os.path.ismount(target):
        raise XlsrEdgeError(f"{shown} is a mount point, which cannot be replaced; give a folder inside it")
    why = _unwritable(target.parent)
    if why:  # found now, not when the work is done
        raise XlsrEdgeError(f"{shown}: cannot write there ({why}); choose another place")
    if not target.exists():
        return target
    if not target.is_dir():
        raise XlsrEdgeError(
            f"{shown} is a file, not a {kind.what}; remove it yourself or choose another path"
        )
    if _is_empty_dir(target):
        return target
    if kind.is_ours(target):
        if not overwrite:
            how = f"pass {overwrite_flag} to replace it" if overwrite_flag else "choose another folder"
            raise XlsrEdgeError(f"output {target} already exists ({kind.what} of {kind.writer}); {how}")
        return target
    try:
        sample = ", ".join(sorted(p.name for p in target.iterdir())[:3])
    except OSError:
        sample = "?"
    replaces = f"{overwrite_flag} only replaces" if overwrite_flag else f"{kind.writer} only replaces"
    raise XlsrEdgeError(
        f"output {target} already exists and holds files that are not a {kind.what} of {kind.writer} "
        f"({sample}); {replaces} its own {kind.what} or an empty folder: choose another {flag}"
    )


def _unwritable(folder: Path) -> str | None:
    """Why files cannot be created in `folder` (or, where it does not exist yet, in the folder that will hold
    it), or None. A read-only file system is refused even for root, for whom permissions are no obstacle."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
    except (OSError, AttributeError):
        pass
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"no permission to write in {folder}"
    return None


# Failures that only a write gives; a read error inside a writer's block passes through unchanged.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def write_failure(
    exc: OSError, target: Path, tmp: Path | None = None, *, after: str | None = None
) -> OutputError | None:
    """An OSError from writing `target` (in its temp folder `tmp`) as one line naming the path and the reason
    ("cannot write out/b/bundle.json: No space left on device; out/b is as it was"), or None when it is not a
    failed write (reading the input, say). `after` replaces the closing "(TARGET is as it was)"."""
    name = Path(os.path.abspath(os.fsdecode(exc.filename))) if exc.filename is not None else None
    if name is not None and tmp is not None and _contains(Path(os.path.abspath(tmp)), name):
        shown = target / name.relative_to(os.path.abspath(tmp))  # the file as it would have been named
    elif exc.errno in _WRITE_ERRNOS or (name is not None and exc.errno in (errno.EACCES, errno.EPERM)):
        shown = Path(os.fsdecode(exc.filename)) if exc.filename is not None else target
    else:
        return None
    reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc)  # pyarrow adds its own words
    hint = "; free some space and run again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return OutputError(f"cannot write {shown}: {reason}{hint} {after or f'({target} is as it was)'}")


# -- writing -------------------------------------------------------------------------------------------------


def _kill_point(step: str) -> None:
    """Test hook: die like kill -9 at this step when XLSR_EDGE_TEST_KILL_AT names it."""
    if os.environ.get(ENV_KILL_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _write_marker(folder: Path, pid: int | None = None) -> None:
    info = {"pid": os.getpid() if pid is None else pid, "host": socket.gethostname(), "tool": "xlsr-edge"}
    (folder / MARKER).write_text(json.dumps(info) + "\n", encoding="utf-8")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a folder; the data is still written
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    """Data on disk before the rename that publishes it (a power cut must not publish empty files)."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(dirpath, name)
            if not p.is_symlink():
                _fsync(p)
        _fsync(Path(dirpath))


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """renameat2(a, b, flags); False where the system cannot (not Linux, old glibc or kernel, a filesystem
    without the flag). Other failures raise OSError (FileExistsError for RENAME_NOREPLACE onto a name)."""
    if sys.platform != "linux" or os.environ.get(ENV_NO_EXCHANGE):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False  # glibc < 2.28 or not glibc
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # kernel or filesystem without this flag
    raise OSError(err, os.strerror(err), str(b))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the system cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _create(new: Path, target: Path) -> bool:
    """Rename `new` to `target` only if no `target` exists, in one step: True when done, False when something
    is at `target` (another run got there first). Never replaces anything."""
    try:
        if _renameat2(new, target, _RENAME_NOREPLACE):
            return True
    except FileExistsError:
        return False
    try:  # fallback: a file is linked (link never replaces), a folder claims the name with mkdir (atomic)
        if not new.is_dir():
            os.link(new, target)
            os.unlink(new)
            return True
        os.mkdir(target)
    except FileExistsError:
        return False
    try:  # rename replaces the empty folder we just made; a racer that filled it makes this fail
        os.rename(new, target)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return False
        raise
    return True


def _sibling(target: Path, stage: str) -> Path:
    return target.with_name(f".{target.name}.xlsr-{stage}-{os.getpid()}")


def _new_temp(target: Path) -> Path:
    """Create `.NAME.xlsr-tmp-PID` (with a counter when this process already writes one) holding our marker."""
    base = _sibling(target, "tmp")
    for n in range(1, 1000):
        tmp = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            tmp.mkdir()
        except FileExistsError:
            if os.path.abspath(tmp) in _ACTIVE or not _removable(tmp, None, os.getpid()):
                continue
            _remove(tmp)  # our PID's leftover from a dead run with the same PID
            tmp.mkdir()
        _ACTIVE.add(os.path.abspath(tmp))
        _write_marker(tmp)
        return tmp
    raise XlsrEdgeError(f"cannot create a temp folder next to {target}")


def swap_in(new: Path, target: Path) -> bool:
    """Put the complete folder `new` at `target`, removing what was there; never a moment without either.
    False (nothing done) when `target` was absent and another run created it meanwhile: what it wrote is not
    ours to replace unchecked."""
    parent = target.parent
    with critical():
        if not os.path.lexists(target):
            if not _create(new, target):
                return False
            _fsync(parent)
            return True
        if _exchange(new, target):
            _kill_point("exchanged")
            _fsync(parent)
            old = new  # the old output now sits at the temp name
        else:
            old = _sibling(target, "old")
            os.rename(target, old)
            _kill_point("old-aside")
            os.rename(new, target)
            _kill_point("new-in")
            _fsync(parent)
    _remove(old)
    return True


@contextmanager
def scratch_folder(target: Path) -> Iterator[Path]:
    """A marked temp folder next to `target` (same filesystem, so its files can be renamed into place),
    removed on the way out whatever happens; recovered by the next run if a kill leaves it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_raise():
        tmp = _new_temp(target)
        try:
            _kill_point("created")
            yield tmp
        finally:
            with critical():
                if tmp.exists():
                    _remove(tmp)
                _ACTIVE.discard(os.path.abspath(tmp))


@contextmanager
def atomic_output(
    target: str | os.PathLike,
    kind: OutputKind,
    *,
    overwrite: bool,
    flag: str = "-o",
    protect: Sequence[tuple[str, str | os.PathLike]] = (),
    overwrite_flag: str | None = "--overwrite",
    commit_if: Callable[[Path, BaseException], bool] | None = None,
) -> Iterator[Path]:
    """Yield a temp folder next to `target`; when the block ends normally, swap it in (see swap_in), otherwise
    remove it and leave the target as it was. `commit_if(tmp, exc)` may still keep an interrupted result (a
    fine-tuning run's resumable state). The same checks as check_output run before and at the swap."""
    target = Path(target)
    checks = dict(overwrite=overwrite, flag=flag, protect=protect, overwrite_flag=overwrite_flag)
    check_output(target, kind, **checks)
    tmp = None
    try:
        with scratch_folder(target) as tmp:
            try:
                yield tmp
            except BaseException as exc:
                if commit_if is None or not commit_if(tmp, exc):
                    raise
                _commit(tmp, target, kind, checks)
                raise
            _kill_point("written")
            _commit(tmp, target, kind, checks)
    except OSError as exc:  # a full disk, a read-only folder: one line naming the file (a write() names none)
        failure = write_failure(exc, target, tmp)
        if failure is None:
            raise
        raise failure from exc


def _commit(tmp: Path, target: Path, kind: OutputKind, checks: dict) -> None:
    check_output(target, kind, **checks)  # the target may have changed during a long run: fail before syncing
    _fsync_tree(tmp)
    (tmp / MARKER).unlink()  # complete now: recognisable as an output of `kind` from here on
    _kill_point("ready")
    for _ in range(3):
        # what is there decides the step, read *before* the check: a racer that fills an absent or empty target
        # after this point makes the create step fail and the next check refuse, never gets swapped out
        present = _has_content(target)
        check_output(target, kind, **checks)  # right before the step that publishes: refuses what it must
        if present:
            if swap_in(tmp, target):  # replacing our own output (--overwrite): the exchange
                return
            continue  # it vanished and another run created it meanwhile: check again
        if _is_empty_dir(target):
            try:  # an empty folder counts as absent: created over, so that a racer cannot win it too
                target.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # filled meanwhile: check again
        with critical():
            if _create(tmp, target):
                _fsync(target.parent)
                return
        # another run created `target` between the check and the rename: check again (refuses it unless
        # --overwrite allows replacing an output of this kind)
    raise XlsrEdgeError(
        f"output {target} keeps changing while this run writes it; is another run writing it?"
    )


def install_files(pairs: Sequence[tuple[Path, Path]], *, replace: bool = True) -> None:
    """Rename finished files into place in the given order (fsynced first; each rename is atomic). With
    replace=False a name that exists (another run wrote it meanwhile) is never replaced: XlsrEdgeError, and
    the files installed before it stay."""
    with critical():
        for src, _dst in pairs:
            _fsync(src)
        for src, dst in pairs:
            if replace:
                os.replace(src, dst)
            elif not _create(src, dst):
                raise XlsrEdgeError(
                    f"{dst} appeared while this run wrote it (another run writing here?); kept it"
                )
            _kill_point("new-in")
        for parent in {dst.parent for _src, dst in pairs}:
            _fsync(parent)
