"""One terminal progress display for the CLI, on tqdm.

`TerminalProgress(label)` is a progress callback (docs/architecture.md, "Progress callback API"). Events
with a `total` in a counting stage move a bar, with the event's `message` beside it; events of other stages
(epoch summaries, "done") print their `message` on a line of their own.

On a terminal the bar is tqdm's, redrawn in place. When the stream is not a terminal (a log file, a pipe,
CI), nothing is redrawn: a plain line is printed when a stage starts and at each further 10% of it, at
most one line every `min_seconds` (the first line of a new stage always prints), so logs never fill up
with carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import IO

# Stages whose events count work towards a total (a bar); others are announcements.
BAR_STAGES = ("batch", "features", "prepare", "resume", "evaluate", "best", "checking", "generating")


class TerminalProgress:
    """A progress callback that draws a tqdm bar on a terminal and plain lines elsewhere."""

    def __init__(self, label: str = "", stream: IO[str] | None = None, min_seconds: float = 0.0,
                 bar_stages: tuple[str, ...] | None = BAR_STAGES, interactive: bool | None = None):
        """`label` names the bar (default: the event's stage); `bar_stages` None makes every event a bar."""
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.min_seconds = float(min_seconds)
        self.bar_stages = bar_stages
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty()) if interactive is None else bool(interactive)
        self.started = time.monotonic()
        self._bar = None
        self._key: tuple | None = None
        self._done = 0
        self._step = -1
        self._printed_stage: str | None = None
        self._last_line = -float("inf")

    def __call__(self, event: dict) -> None:
        stage = str(event.get("stage") or "")
        done, total = event.get("done"), event.get("total")
        if total and done is not None and (self.bar_stages is None or stage in self.bar_stages):
            self._advance(stage, int(done), int(total), event.get("message"))
        elif event.get("message"):
            self.write(str(event["message"]))

    def _advance(self, stage: str, done: int, total: int, message) -> None:
        key = (stage, total)
        if key != self._key or done < self._done:
            self.close()
            self._key, self._step = key, -1
            if self.interactive:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=self.label or stage, file=self.stream, leave=False,
                                 dynamic_ncols=True, mininterval=0.2)
        self._done = done
        if self._bar is not None:
            if message:
                self._bar.set_postfix_str(str(message)[:80], refresh=False)
            self._bar.update(max(0, min(done, total) - self._bar.n))
            if done >= total:
                self.close()
            return
        step = min(10, done * 10 // max(total, 1))
        now = time.monotonic()
        new_stage = stage != self._printed_stage
        if step > self._step and (new_stage or now - self._last_line >= self.min_seconds):
            self._step, self._last_line, self._printed_stage = step, now, stage
            text = f"{self.label or stage}: {done}/{total} ({done / max(total, 1):.0%}, {now - self.started:.1f} s)"
            print(f"{text} {message}" if message else text, file=self.stream, flush=True)

    def write(self, text: str) -> None:
        """Print a line of its own (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the current bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._key = None
        self._done = 0
