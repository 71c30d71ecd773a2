"""Keep the operator's resident memory near what it uses (docs/benchmarks.md: it idled at 62-64 MiB
without these, against a 60 MiB budget):

- glibc keeps freed heap pages and gives each allocating thread its own arena, so a long-running process
  with a thread pool holds memory it no longer needs: fewer arenas, and malloc_trim now and then, give
  back about 2.5 MiB. Elsewhere than glibc (musl, macOS) both are no-ops.
- asyncio gives every TLS connection a 256 KiB read buffer; kopf holds one connection per watched kind
  (about eight): 2 MiB for streams of small events. A TLS record carries at most 16 KiB, and one read
  returns at most one record, so a 16 KiB buffer costs no extra round trips, only more, smaller reads
  from the socket on a large listing.
"""

from __future__ import annotations

import asyncio.sslproto
import ctypes

#: mallopt's M_ARENA_MAX (malloc.h).
M_ARENA_MAX = -8
#: Arenas for the whole process: the event loop and the worker threads rarely allocate at the same time.
ARENAS = 2
#: Seconds between trims while the operator runs.
TRIM_SECONDS = 10.0
#: The largest TLS record's payload (RFC 8446 5.1).
TLS_RECORD = 16 * 1024


def _libc() -> ctypes.CDLL | None:
    """The C library the process already has loaded, if it is glibc."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def limit_arenas(arenas: int = ARENAS) -> None:
    """Call before the threads start: threads created later share these arenas."""
    if _LIBC is not None:
        _LIBC.mallopt(M_ARENA_MAX, arenas)


def trim() -> None:
    """Return the heap's free pages to the system (passes decode whole listings, then drop them)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def small_tls_buffers(size: int = TLS_RECORD) -> None:
    """Call before the event loop connects. asyncio reads that much per call (SSLProtocol.max_size, a
    class attribute since Python 3.11's rewrite of sslproto); an interpreter without it is left alone."""
    protocol = getattr(asyncio.sslproto, "SSLProtocol", None)
    if protocol is not None and isinstance(getattr(protocol, "max_size", None), int):
        protocol.max_size = size
