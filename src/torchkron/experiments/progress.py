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
        # The ETA weighs each epoch by its run's expected cost (see expect); without
        # costs every epoch weighs 1.
        self._cost: dict[str, float] = {}
        self._total_weight = float(total_epochs)
        self._done_weight = 0.0
        self._timed_weight = 0.0
        self._weighted = False

    def skip(self, epochs: int) -> None:
        """Count epochs that are already done (finished or resumed runs)."""
        self.done += epochs
        self._done_weight += epochs

    def expect(self, variant: str, cost: float, epochs: int, done: int) -> None:
        """Declare a run: its per-epoch cost, epochs and epochs already done.

        Once any run is declared, the ETA is the elapsed time scaled by the remaining
        cost over the cost done in this session, so long runs scheduled first do not
        inflate it.
        """
        if not self._weighted:
            self._weighted, self._total_weight, self._done_weight = True, 0.0, 0.0
            self.total = 0
        self.total += epochs
        self._cost[variant] = cost
        self._total_weight += cost * epochs
        self._done_weight += cost * done
        self.done += done

    def message(self, text: str) -> None:
        self._emit(text)

    def epoch(self, ev: EpochEvent) -> None:
        self.done += 1
        weight = self._cost.get(ev.variant, 1.0)
        self._done_weight += weight
        self._timed_weight += weight
        elapsed = time.perf_counter() - self.start
        remaining = max(0.0, self._total_weight - self._done_weight)
        eta = elapsed / self._timed_weight * remaining
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
