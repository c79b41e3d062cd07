"""Progress lines with an ETA, to the terminal (unless quiet) and always to a log file."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from torchkron.experiments.trainer import EpochEvent

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished epochs over all runs and prints one line per epoch.

    Args:
        total_epochs: epochs of all runs together (finished ones included).
        quiet: print nothing to ``stream`` (the log file still gets every line).
        log_path: file that every line is appended to, or None.
        stream: where lines go; default stderr. Lines are printed only when it is a
            terminal, unless ``force`` is set.
        force: print to ``stream`` even when it is not a terminal.
    """

    def __init__(
        self,
        total_epochs: int,
        *,
        quiet: bool = False,
        log_path: Path | None = None,
        stream: TextIO | None = None,
        force: bool = False,
    ) -> None:
        self.total = total_epochs
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.show = not quiet and (force or self.stream.isatty())
        self.log_path = log_path
        self.start = time.perf_counter()
        self._timed_done = 0  # epochs trained in this session (the ETA's basis)

    def skip(self, epochs: int) -> None:
        """Count epochs that are already done (finished or resumed runs)."""
        self.done += epochs

    def message(self, text: str) -> None:
        self._emit(text)

    def epoch(self, ev: EpochEvent) -> None:
        self.done += 1
        self._timed_done += 1
        elapsed = time.perf_counter() - self.start
        remaining = self.total - self.done
        eta = elapsed / self._timed_done * remaining
        pct = 100.0 * self.done / max(1, self.total)
        self._emit(
            f"[{self.done:>{len(str(self.total))}}/{self.total} {pct:5.1f}%] "
            f"{ev.variant} seed {ev.seed} epoch {ev.epoch}/{ev.epochs}  "
            f"train {ev.train_loss:.4f}  test {ev.test_loss:.4f}  acc {ev.test_accuracy:6.2f}%  "
            f"{ev.seconds:5.2f}s  elapsed {format_duration(elapsed)}  ETA {format_duration(eta)}"
        )

    def _emit(self, line: str) -> None:
        if self.show:
            print(line, file=self.stream, flush=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(line + "\n")
