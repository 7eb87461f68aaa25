"""Run verifier calls in a child process with a hard wall-clock limit (killed and restarted on timeout).

Why a process: math-verify's own timeouts use `signal.alarm`, which works only in the main thread
(elsewhere `parse` raises ValueError) and cannot stop C code such as a huge integer power, and a
reasoning-gym verifier (countdown) runs `sympy.parse_expr` on model output. A child process can
always be killed. Cost: one start per worker (and after each timeout) and a pipe round trip per
call, small beside a grade (docs/models-and-tasks.md).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from .base import RewardTimeout

_WORKER_SCRIPT = Path(__file__).with_name("_verifier_worker.py")
_HEADER = struct.Struct("<Q")  # frame = 8-byte little-endian length + pickle


def _write_frame(stream: IO[bytes], obj: Any) -> None:
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("verifier worker pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


_PARENT_ENV = "ENTROPY_DYNAMICS_WORKER_PARENT"  # the parent's pid, and whether to set PDEATHSIG
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Make this worker exit when its parent does, even while a verifier runs C code.

    On Linux the kernel kills it (prctl PR_SET_PDEATHSIG, requested when the parent started it
    from its main thread: the signal follows the thread that started the child). Everywhere, a
    watcher thread exits once the parent is gone (it needs the GIL, so it backs up the kernel).
    """
    parent, _, kernel = os.environ.get(_PARENT_ENV, "").partition(":")
    if not parent.isdigit():
        return
    parent_pid = int(parent)
    if kernel == "1" and sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request above
        os._exit(0)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _serve(preload: Sequence[str]) -> None:
    """Child loop: import `preload`, say ready, then answer (fn, args) frames until stdin closes.

    Replies go to a private copy of stdout; fd 1 is pointed at stderr so that library prints
    cannot corrupt the reply stream. The terminal's Ctrl-C (SIGINT to the whole foreground
    process group) is ignored: the parent decides what an interrupt means, and a worker killed
    by it would turn the reward being computed into a silent 0. A verifier that calls
    `sys.exit` is answered as an error like any other exception.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    for module in preload:
        importlib.import_module(module)
    _write_frame(replies, ("ready", None))
    while True:
        try:
            fn, args = _read_frame(requests)
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args))
        except (Exception, SystemExit) as err:  # SystemExit: a verifier's sys.exit()
            reply = ("error", f"{type(err).__name__}: {err}")
        _write_frame(replies, reply)


class IsolatedWorker:
    """A lazily started child process that runs module-level functions under a time limit.

    `call(fn, *args)` returns `fn(*args)` computed in the child, raises `RewardTimeout` after
    `timeout_s` seconds (the child is killed; the next call starts a fresh one), and RuntimeError
    if `fn` raised there. `fn` and the arguments must be picklable (module-level functions).
    The child is `python .../tasks/_verifier_worker.py` (a fresh interpreter with the parent's
    sys.path; the parent's main script is never re-run). It does not run the package's
    `__init__` (no torch), so `fn` must not need names re-exported there (`entropy_dynamics.X`);
    submodules import normally. POSIX only (select on a pipe).
    Thread-safe (calls are serialised). Pickling the worker drops the process.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        start_timeout_s: float = 120.0,
        preload: Sequence[str] = (),
    ) -> None:
        if not isinstance(timeout_s, (int, float)) or timeout_s <= 0:
            raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.preload = tuple(preload)
        self.timeouts = 0  # calls that ran out of time since construction
        self.starts = 0  # worker processes started (1 + restarts after timeouts or crashes)
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the child now (otherwise the first call does)."""
        with self._lock:
            self._ensure_started()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            process = self._ensure_started()
            try:
                _write_frame(process.stdin, (fn, args))
                ready = self._wait(process, self.timeout_s)
                status, value = _read_frame(process.stdout) if ready else (None, None)
            except (EOFError, OSError) as err:
                self._stop()
                raise RuntimeError("verifier worker process died during a call") from err
            except BaseException:
                # Interrupted between request and reply (Ctrl-C, a caller's SIGALRM): the reply
                # would be read as the next call's, so this worker cannot be reused.
                self._stop()
                raise
            if not ready:
                self.timeouts += 1
                self._stop()
                raise RewardTimeout(
                    f"{getattr(fn, '__name__', fn)} ran past "
                    f"{self.timeout_s:g} s; its worker process was killed"
                )
        if status == "error":
            raise RuntimeError(f"verifier raised in its worker: {value}")
        return value

    @staticmethod
    def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
        readable, _, _ = select.select([process.stdout], [], [], timeout_s)
        return bool(readable)

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        self._stop()
        main_thread = threading.current_thread() is threading.main_thread()
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
            **{_PARENT_ENV: f"{os.getpid()}:{int(main_thread)}"},
        )
        process = subprocess.Popen(
            [sys.executable, str(_WORKER_SCRIPT), *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            bufsize=0,
        )
        self._process = process
        try:
            if not self._wait(process, self.start_timeout_s):
                raise RuntimeError(f"not ready within {self.start_timeout_s:g} s")
            _read_frame(process.stdout)  # ("ready", None)
        except (RuntimeError, EOFError, OSError) as err:
            self._stop()
            raise RuntimeError(f"verifier worker failed to start: {err}") from err
        self.starts += 1
        return process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdin, process.stdout):
            with contextlib.suppress(OSError):
                stream.close()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_process=None, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown modules may be gone
            self._stop()
