"""Progress lines with an ETA, to the terminal (unless quiet) and always to a log file."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from torchkron.experiments.common.files import write_error

__all__ = ["EpochEvent", "Progress", "format_duration"]


@dataclass(frozen=True)
class EpochEvent:
    """Progress of one run after one epoch (sent to the progress printer)."""

    variant: str
    seed: int
    epoch: int
    epochs: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    seconds: float
    resumed_from: int = 0


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts finished epochs over all runs and prints progress with an ETA.

    Two kinds of lines: one per epoch (to ``stream``, by default stderr, when it is a
    terminal) and one per finished run (to ``out``, by default stdout, when it is *not* a
    terminal, so that a piped or logged session still shows progress). Every line goes to
    the log file.

    The ETA comes from measured seconds per epoch of each variant (seeded from the
    epochs already done by resumed runs); variants not yet measured are estimated from
    their modelled cost (:meth:`~torchkron.experiments.mnist.variants.MLPSpec.epoch_cost`)
    scaled by how fast the measured ones ran against their model, and the remaining work
    is spread over ``workers``.

    Args:
        total_epochs: epochs of all runs together (finished ones included); replaced by
            the declared runs once :meth:`expect` is called.
        quiet: print nothing (the log file still gets every line).
        log_path: file that every line is appended to, or None.
        stream: where epoch lines go; default stderr. Printed only when it is a terminal,
            unless ``force`` is set.
        force: print epoch lines to ``stream`` even when it is not a terminal.
        out: where run lines go; default stdout. Printed only when it is not a terminal.
        workers: runs trained side by side (for the ETA).
    """

    def __init__(
        self,
        total_epochs: int,
        *,
        quiet: bool = False,
        log_path: Path | None = None,
        stream: TextIO | None = None,
        force: bool = False,
        out: TextIO | None = None,
        workers: int = 1,
    ) -> None:
        self.total = total_epochs
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.out = out if out is not None else sys.stdout
        self.show = not quiet and (force or _isatty(self.stream))
        self.show_runs = not quiet and not _isatty(self.out)
        self.log_path = log_path
        self.workers = max(1, workers)
        self.start = time.perf_counter()
        self._declared = False
        self._cost: dict[str, float] = {}
        self._measured: dict[str, list[float]] = {}
        self._left: dict[tuple[str, int | None], int] = {}
        self._run_seconds: dict[tuple[str, int | None], float] = {}
        self.runs_total = 0
        self.runs_done = 0

    def skip(self, epochs: int) -> None:
        """Count epochs that are already done (finished or resumed runs)."""
        self.done += epochs

    def expect(
        self,
        variant: str,
        cost: float,
        epochs: int,
        done: int,
        *,
        seed: int | None = None,
        seconds: Sequence[float] = (),
    ) -> None:
        """Declare a run: its modelled per-epoch cost, epochs, epochs already done and
        the measured seconds of those (from its run file)."""
        if not self._declared:
            self._declared, self.total = True, 0
        self.total += epochs
        self.done += done
        self._cost[variant] = cost
        self._measured.setdefault(variant, []).extend(float(s) for s in seconds)
        self._left[(variant, seed)] = max(0, epochs - done)
        self.runs_total += 1
        if done >= epochs:
            self.runs_done += 1

    def message(self, text: str) -> None:
        """A line for the terminal (stderr, or stdout when piped) and the log."""
        self._emit(text, run_line=True)

    def log(self, text: str) -> None:
        """A line for the log file only."""
        self._write_log(text)

    def epoch_seconds(self, variant: str) -> float | None:
        """Estimated seconds per epoch of ``variant`` (None before anything is measured)."""
        measured = self._measured.get(variant)
        if measured:
            return sum(measured) / len(measured)
        pairs = [(sum(m) / len(m), self._cost[v]) for v, m in self._measured.items() if m]
        cost = self._cost.get(variant)
        if not pairs or cost is None:
            return None
        # Measured-to-modelled speed of the variants seen so far, applied to this one.
        scale = sum(t for t, _ in pairs) / max(1e-12, sum(c for _, c in pairs))
        return cost * scale

    def eta(self) -> float | None:
        """Seconds until every declared run is done (None before any measurement)."""
        remaining: list[float] = []
        for (variant, _), left in self._left.items():
            if left:
                per_epoch = self.epoch_seconds(variant)
                if per_epoch is None:
                    return None
                remaining.append(left * per_epoch)
        if not remaining:
            return 0.0
        # Spread over the workers, but never shorter than the longest single run left.
        return max(sum(remaining) / self.workers, max(remaining))

    def epoch(self, ev: EpochEvent) -> None:
        self.done += 1
        key: tuple[str, int | None] = (ev.variant, ev.seed)
        if key not in self._left:
            key = (ev.variant, None)
        if key in self._left:
            self._left[key] = max(0, self._left[key] - 1)
        self._measured.setdefault(ev.variant, []).append(ev.seconds)
        self._run_seconds[key] = self._run_seconds.get(key, 0.0) + ev.seconds
        elapsed = time.perf_counter() - self.start
        eta = self.eta()
        eta_text = "?" if eta is None else format_duration(eta)
        pct = 100.0 * self.done / max(1, self.total)
        self._emit(
            f"[{self.done:>{len(str(self.total))}}/{self.total} {pct:5.1f}%] "
            f"{ev.variant} seed {ev.seed} epoch {ev.epoch}/{ev.epochs}  "
            f"train {ev.train_loss:.4f}  test {ev.test_loss:.4f}  acc {ev.test_accuracy:6.2f}%  "
            f"{ev.seconds:5.2f}s  elapsed {format_duration(elapsed)}  ETA {eta_text}"
        )
        if ev.epoch == ev.epochs:
            self.runs_done += 1
            total = max(self.runs_total, self.runs_done)
            line = (
                f"run {self.runs_done}/{total} done: {ev.variant} seed {ev.seed}, test "
                f"accuracy {ev.test_accuracy:.2f}%, {format_duration(self._run_seconds[key])} "
                f"for {ev.epoch - ev.resumed_from} epoch(s); elapsed "
                f"{format_duration(elapsed)}, ETA {eta_text}"
            )
            self._emit(line, run_line=True, epoch_line=False)

    def _emit(self, line: str, *, run_line: bool = False, epoch_line: bool = True) -> None:
        if self.show and epoch_line:
            print(line, file=self.stream, flush=True)
        elif self.show_runs and run_line:
            print(line, file=self.out, flush=True)
        self._write_log(line)

    def _write_log(self, line: str) -> None:
        if self.log_path is None:
            return
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as f:
                f.write(line + "\n")
        except OSError as exc:
            raise write_error(self.log_path, exc) from None


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
