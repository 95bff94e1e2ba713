"""A time limit for one check that works in plain Python, in a Jupyter cell and in other threads.

In the main thread a SIGALRM timer raises :class:`_TimeLimit` every 0.1 s once the limit has
passed (it also interrupts ``time.sleep``) and restores any timer set before; in other threads
a watchdog thread raises it asynchronously. A function that catches it every time cannot be
stopped in-process; ``moe-teach check`` then kills its check process.
"""

from __future__ import annotations

import ctypes
import signal
import threading
import time

CHECK_TIME_LIMIT = 60.0  # seconds one check may take by default
MAX_TIME_LIMIT = 3600.0  # the largest time limit accepted


class _TimeLimit(BaseException):
    """Raised into the learner's code when a check runs out of time (a BaseException, so that the
    learner's ``except Exception`` does not swallow it)."""


def check_time_limit(name: str, value) -> float:
    """``value`` must be a number of seconds with 0 < value <= MAX_TIME_LIMIT; raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds (0 < {name} <= {MAX_TIME_LIMIT:g}), "
                        f"got {value!r} of type {type(value).__name__}")
    if not 0 < value <= MAX_TIME_LIMIT:
        raise ValueError(f"{name} must be a number of seconds with 0 < {name} <= {MAX_TIME_LIMIT:g}, got {value}")
    return float(value)


class _Deadline:
    """Raise :class:`_TimeLimit` in the calling thread once ``seconds`` have passed, again every 0.1 s
    until :meth:`stop` (so a learner's bare ``except:`` that catches it once does not keep the loop
    alive).

    In the main thread (plain Python and Jupyter kernels run cells there) a SIGALRM timer does it,
    which also interrupts ``time.sleep``; elsewhere (another thread, or no SIGALRM) a watchdog thread
    sets an asynchronous exception in the checking thread.
    """

    _REPEAT = 0.1

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = False
        self._previous_handler = None
        self._watchdog = None
        self._stopped = threading.Event()
        self._thread_id = threading.get_ident()
        self._use_signal = (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread())

    def _on_alarm(self, signum, frame):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, self._REPEAT)
            raise _TimeLimit

    def _watch(self):
        if self._stopped.wait(self.seconds):
            return
        while self.armed and not self._stopped.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id),
                                                       ctypes.py_object(_TimeLimit))
            self._stopped.wait(self._REPEAT)

    def start(self) -> None:
        self.armed = True
        if self._use_signal:
            self._previous_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            self._started = time.monotonic()
            self._previous_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self._watchdog = threading.Thread(target=self._watch, name="check-time-limit", daemon=True)
            self._watchdog.start()

    def stop(self) -> None:
        """Disarm; safe to call more than once."""
        if not self.armed:
            return
        self.armed = False
        if self._use_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous_handler)
            delay, interval = self._previous_timer
            if delay > 0 or interval > 0:   # someone else's timer was running: put it back
                left = delay - (time.monotonic() - self._started) if delay > 0 else interval
                signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3), interval)
        else:
            self._stopped.set()
            self._watchdog.join()
            # drop an exception the watchdog set but the interpreter has not delivered yet
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
