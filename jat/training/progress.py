"""Terminal progress (a bar on a TTY, plain lines otherwise) and optional wandb logging."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO


def _fmt(metrics: dict[str, float], prefix: str) -> str:
    parts = []
    if "forces_mae" in metrics:
        parts.append(f"{prefix}F MAE {metrics['forces_mae']:.4f} eV/Å")
    if "energy_atom_mae" in metrics:
        parts.append(f"{prefix}E MAE {1e3 * metrics['energy_atom_mae']:.2f} meV/atom")
    return "  ".join(parts)


def describe(metrics: dict[str, float]) -> str:
    """One line of figures for a set of evaluation metrics."""
    out = []
    if "forces_mae" in metrics:
        out.append(
            f"force MAE {metrics['forces_mae']:.4f} eV/Å (RMSE {metrics['forces_rmse']:.4f})"
        )
    if "energy_atom_mae" in metrics:
        out.append(
            f"energy MAE {1e3 * metrics['energy_atom_mae']:.2f} meV/atom "
            f"(RMSE {1e3 * metrics['energy_atom_rmse']:.2f}), "
            f"{1e3 * metrics['energy_mae']:.1f} meV/structure"
        )
    return "; ".join(out) if out else "no labels"


class Progress:
    """Epoch lines, and within an epoch a live bar when writing to a terminal."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = ("bar" if tty else "lines") if mode == "auto" else mode
        self._last = 0.0

    def message(self, text: str) -> None:
        if self.mode != "none":
            print(text, file=self.stream, flush=True)

    def step(self, epoch: int, epochs: int, done: int, total: int) -> None:
        if self.mode != "bar":
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.2:
            return
        self._last = now
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "█" * filled + "·" * (width - filled)
        self.stream.write(f"\repoch {epoch}/{epochs} |{bar}| {done}/{total}")
        self.stream.flush()

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self.mode == "none":
            return
        if self.mode == "bar":
            self.stream.write("\r\033[K")
        val = {k[4:]: v for k, v in row.items() if k.startswith("val_")}
        loss = row.get("train_loss", math.nan)
        text = (
            f"epoch {row['epoch']}/{epochs}  loss {loss:.5g}  {_fmt(val, 'val ')}  "
            f"lr {row['lr']:.2e}  {row['train_structures_per_s']:.1f} structures/s  "
            f"{row['epoch_time']:.1f} s"
        )
        if row.get("best"):
            text += "  *"
        print(text, file=self.stream, flush=True)


class WandbLogger:
    """Logs each epoch's row to Weights & Biases (offline mode needs no network or account)."""

    def __init__(self, project: str, mode: str, name: str, config: dict, directory: str):
        import os

        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self._wandb = wandb
        self.run = wandb.init(
            project=project, mode=mode, name=name, config=config, dir=directory, reinit=True
        )

    def log(self, row: dict[str, Any]) -> None:
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float))}
        self.run.log(numbers, step=row["epoch"])

    def finish(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, (int, float)):
                self.run.summary[k] = v
        self.run.finish()
