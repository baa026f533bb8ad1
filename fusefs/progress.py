"""Progress of long commands (`scrub`): a bar on a terminal, plain lines when not on one.

On a terminal tqdm draws a bar on stderr. Elsewhere (a container's log, CI, a pipe) a bar's
carriage returns are noise, so one plain line is written at most every `interval` seconds
(FUSEFS_PROGRESS_INTERVAL, default 10; 0: every update), and a last line at the end once any
was written: a short run stays silent.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO

DEFAULT_INTERVAL = 10.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("FUSEFS_PROGRESS_INTERVAL", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class Progress:
    """`update(done, total, nbytes)` as work goes on; `close()` at the end."""

    def __init__(self, desc: str, unit: str, *, bar: bool | None = None,
                 stream: IO[str] | None = None, interval: float | None = None) -> None:
        self.desc, self.unit = desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.interval = _interval() if interval is None else interval
        self._bar = None
        self._start = self._last = time.monotonic()
        self._lines = 0
        self._state: tuple[int, int, int] | None = None

    def update(self, done: int, total: int, nbytes: int = 0) -> None:
        self._state = (done, total, nbytes)
        if self.bar:
            self._draw(done, total, nbytes)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._line(done, total, nbytes)

    def _draw(self, done: int, total: int, nbytes: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=self.unit, desc=self.desc, file=self.stream)
        self._bar.total = max(total, done)
        self._bar.n = done
        self._bar.set_postfix_str(f"{nbytes / 1e6:.0f} MB read", refresh=False)
        self._bar.refresh()

    def _line(self, done: int, total: int, nbytes: int) -> None:
        pct = f" ({100 * done // total}%)" if total else ""
        took = time.monotonic() - self._start
        print(f"{self.desc}: {done}/{total} {self.unit}s{pct}, {nbytes / 1e6:.0f} MB read, "
              f"{took:.0f} s", file=self.stream, flush=True)
        self._lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._lines and self._state is not None:
            self._line(*self._state)
