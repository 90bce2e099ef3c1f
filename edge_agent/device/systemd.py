"""Talking to systemd: readiness and watchdog notifications, and clock trust.

Stdlib only and cheap to import: the CLI imports the package too, so ``socket``
and ``ctypes`` are imported inside the functions that need them.

``notify`` speaks the sd_notify protocol (one datagram to ``$NOTIFY_SOCKET``)
without libsystemd. The daemon sends ``WATCHDOG=1`` only while every one of its
loops is really alive (``Agent.alive``): a wedged worker then makes systemd kill and
restart the service.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

__all__ = [
    "SYNCHRONIZED_MARKER",
    "clock_synchronized",
    "notify",
    "watchdog_interval",
]

log = logging.getLogger("edge_agent.systemd")

#: touched by systemd-timesyncd once it has synchronised the clock (tmpfs: gone at boot)
SYNCHRONIZED_MARKER = "/run/systemd/timesync/synchronized"

# Above this estimated error the kernel itself declares the clock unsynchronised
# (NTP_PHASE_LIMIT); timedatectl's "System clock synchronized" uses the same bound.
_MAX_ERROR_US = 16_000_000
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


def notify(state: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, ``"WATCHDOG=1"``, ``"STOPPING=1"``) to systemd.

    Returns False when not started by systemd (no ``$NOTIFY_SOCKET``) or when
    the datagram could not be sent; socket errors are logged at debug level and
    never raised, because losing a notification must not stop the daemon.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # Linux abstract namespace
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.debug("sd_notify %r to %r failed: %s", state, address, exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or None.

    None when systemd expects no pings: ``$WATCHDOG_USEC`` is unset or invalid,
    or ``$WATCHDOG_PID`` names another process.
    """
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000


def clock_synchronized(*, marker: str = SYNCHRONIZED_MARKER) -> bool:
    """True when the system clock is known to be synchronised to a time source.

    First the marker file that systemd-timesyncd touches once synchronised; then
    the kernel's own NTP state via ``adjtimex`` (set by chrony, ntpd, timesyncd
    or a PTP/GPS daemon alike): synchronised when ``STA_UNSYNC`` is clear and
    the estimated error is under 16 s.

    When neither answers (not Linux, or ``adjtimex`` unavailable) the answer is
    False: a Raspberry Pi has no real-time clock and boots on the last saved
    time, so "unknown" must hold time-based jobs rather than fire them at a
    wrong instant. Development machines and containers normally share a host
    kernel that is NTP-disciplined and answer True through ``adjtimex``; where
    they do not, ``[clock] trust = "always"`` is the explicit way to trust the
    clock as it is.
    """
    if os.path.exists(marker):
        return True
    timex = _read_kernel_timex()
    if timex is None:
        return False
    return _timex_synchronized(*timex)


def _timex_synchronized(state: int, status: int, maxerror_us: int) -> bool:
    """Interpret ``adjtimex`` results the way timedatectl and the kernel do."""
    if state in (-1, _TIME_ERROR):
        return False
    return not (status & _STA_UNSYNC) and maxerror_us < _MAX_ERROR_US


def _read_kernel_timex() -> tuple[int, int, int] | None:
    """(clock state, status bits, maxerror in µs) from a read-only ``adjtimex``, or None.

    A call with ``modes = 0`` changes nothing and needs no privilege, so neither
    CAP_SYS_TIME nor ``ProtectClock=`` is needed; but ``ProtectClock=`` filters
    the syscall out entirely, which is why the unit does not set it. No ctypes
    callback is created, so this works under ``MemoryDenyWriteExecute=``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        adjtimex = libc.adjtimex
    except (OSError, AttributeError) as exc:
        log.debug("adjtimex unavailable: %s", exc)
        return None

    class _Timeval(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    # struct timex from <sys/timex.h>, in full: the kernel writes all of it.
    class _Timex(ctypes.Structure):
        _fields_ = [
            ("modes", ctypes.c_uint),
            ("offset", ctypes.c_long),
            ("freq", ctypes.c_long),
            ("maxerror", ctypes.c_long),
            ("esterror", ctypes.c_long),
            ("status", ctypes.c_int),
            ("constant", ctypes.c_long),
            ("precision", ctypes.c_long),
            ("tolerance", ctypes.c_long),
            ("time", _Timeval),
            ("tick", ctypes.c_long),
            ("ppsfreq", ctypes.c_long),
            ("jitter", ctypes.c_long),
            ("shift", ctypes.c_int),
            ("stabil", ctypes.c_long),
            ("jitcnt", ctypes.c_long),
            ("calcnt", ctypes.c_long),
            ("errcnt", ctypes.c_long),
            ("stbcnt", ctypes.c_long),
            ("tai", ctypes.c_int),
            ("_reserved", ctypes.c_int * 11),
        ]

    adjtimex.argtypes = [ctypes.POINTER(_Timex)]
    adjtimex.restype = ctypes.c_int
    timex = _Timex()  # zeroed: modes = 0 reads without adjusting
    state = adjtimex(ctypes.byref(timex))
    if state == -1:
        log.debug("adjtimex failed: %s", os.strerror(ctypes.get_errno()))
        return None
    return state, timex.status, timex.maxerror
