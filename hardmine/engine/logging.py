"""Training logs: a CSV row per logged iteration and the same scalars in TensorBoard."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class MetricLogger:
    """Append rows to `DIR/log.csv` and scalars to TensorBoard under `DIR/tensorboard`.

    The CSV header is fixed by the first row, plus `columns` that rows fill only now and then
    (empty cells elsewhere); keys outside the header go to TensorBoard only. On resume rows are
    appended to the existing file after dropping rows past the resumed iteration (they were written
    after the last checkpoint) and any row cut short by a killed process.
    """

    def __init__(
        self,
        out_dir: Path,
        resume_from: int | None = None,
        tensorboard: bool = True,
        columns: Sequence[str] = (),
    ) -> None:
        self.path = out_dir / "log.csv"
        self.columns = list(columns)
        self.fields: list[str] | None = None
        if resume_from is not None and self.path.is_file():
            with self.path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if _iteration(r) <= resume_from]
            if rows:
                self.fields = self._with_columns(list(rows[0].keys()))
                self._rewrite(rows)
        elif self.path.exists():
            self.path.unlink()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_from)

    def _with_columns(self, fields: list[str]) -> list[str]:
        return fields + [c for c in self.columns if c not in fields]

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        assert self.fields is not None
        with self.path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, iteration: int, scalars: dict[str, float]) -> None:
        row = {"iteration": iteration, **{k: f"{v:.6g}" for k, v in scalars.items()}}
        if self.fields is None:
            self.fields = self._with_columns(list(row.keys()))
            self._rewrite([])
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _iteration(row: dict[str | None, Any]) -> float:
    """A row's iteration; infinity (never kept) for a row that is incomplete or malformed."""
    if None in row or any(v is None for v in row.values()):
        return float("inf")
    try:
        return int(row["iteration"])  # type: ignore[arg-type]
    except (KeyError, ValueError):
        return float("inf")
