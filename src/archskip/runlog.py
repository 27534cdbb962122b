"""Run logs: one CSV per stream (train.csv, eval.csv, policy.csv), optionally TensorBoard too."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .io import atomic_write_text, ensure_dir


class RunLogger:
    def __init__(self, out_dir: str | Path | None, tensorboard: bool = False, resume: bool = False):
        """`resume=True` appends to the existing logs; otherwise a stream's first row starts its file afresh."""
        self.dir = ensure_dir(out_dir) if out_dir else None
        self.resume = resume
        self._files: dict[str, tuple] = {}
        self._tb = None
        if tensorboard and self.dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise RuntimeError("train.tensorboard=true needs the tensorboard package: pip install 'archskip[tensorboard]'") from e
            self._tb = SummaryWriter(str(self.dir / "tensorboard"))

    def rewind(self, stream: str, step: int) -> None:
        """Drop rows past `step` (a resumed run repeats the steps after its last checkpoint)."""
        if self.dir is None or stream in self._files:
            return
        path = self.dir / f"{stream}.csv"
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        kept = [r for r in body if r and float(r[0]) <= step]
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *kept])
        atomic_write_text(path, buf.getvalue())

    def log(self, stream: str, step: int, **values: float) -> None:
        if self.dir is None:
            return
        row = {"step": step, **values}
        if stream not in self._files:
            path = self.dir / f"{stream}.csv"
            # resuming: keep the old rows and their header
            f = open(path, "a" if self.resume else "w", newline="", encoding="utf-8")
            fields = list(row)
            if path.stat().st_size == 0:
                csv.writer(f).writerow(fields)
            else:
                with open(path, encoding="utf-8", newline="") as r:
                    fields = next(csv.reader(r))
            self._files[stream] = (f, csv.DictWriter(f, fieldnames=fields, extrasaction="ignore"))
        f, writer = self._files[stream]
        writer.writerow(row)
        f.flush()
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{stream}/{k}", v, step)

    def close(self) -> None:
        for f, _ in self._files.values():
            f.close()
        self._files.clear()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
