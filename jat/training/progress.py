"""Terminal progress (a tqdm bar on a terminal, plain lines otherwise) and wandb logging."""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from tqdm import tqdm

from jat.config.options import PROGRESS_MODES

_OWN_MAES = ("forces_mae", "energy_mae", "energy_atom_mae")


def property_maes(metrics: dict[str, float]) -> dict[str, float]:
    """The property targets' MAEs among ``metrics`` (``<key>_mae`` with a ``<key>_rmse``),
    by key (in the target's unit)."""
    return {
        k[: -len("_mae")]: v
        for k, v in metrics.items()
        if k.endswith("_mae") and k not in _OWN_MAES and f"{k[: -len('_mae')]}_rmse" in metrics
    }


def _fmt(metrics: dict[str, float], prefix: str) -> str:
    parts = []
    if "forces_mae" in metrics:
        parts.append(f"{prefix}F MAE {metrics['forces_mae']:.4f} eV/Å")
    if "energy_atom_mae" in metrics:
        parts.append(f"{prefix}E MAE {1e3 * metrics['energy_atom_mae']:.2f} meV/atom")
    parts.extend(f"{prefix}{k} MAE {v:.4g}" for k, v in property_maes(metrics).items())
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
    out.extend(
        f"{k} MAE {v:.4g} (RMSE {metrics[f'{k}_rmse']:.4g})"
        for k, v in property_maes(metrics).items()
    )
    return "; ".join(out) if out else "no labels"


class Progress:
    """Epoch lines, and within an epoch a live tqdm bar when writing to a terminal.

    ``mode``: ``bar`` (a bar per epoch, replaced by the epoch's line), ``lines`` (the epoch lines
    only, for logs), ``none`` (silent) or ``auto`` (``bar`` if ``stream`` is a terminal, else
    ``lines``).
    """

    MODES = PROGRESS_MODES

    def __init__(self, mode: str = "auto", stream: TextIO | None = None):
        if mode not in self.MODES:
            raise ValueError(f"progress mode must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.stream = stream or sys.stdout
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.mode = ("bar" if tty else "lines") if mode == "auto" else mode
        self._bar: tqdm | None = None
        self._bar_epoch: int | None = None

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)  # above the bar, which is redrawn
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)

    def step(self, epoch: int, epochs: int, done: int, total: int) -> None:
        if self.mode != "bar":
            return
        if self._bar is None or self._bar_epoch != epoch:
            self.close()
            self._bar = tqdm(
                total=total,
                desc=f"epoch {epoch}/{epochs}",
                unit="step",
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.2,
            )
            self._bar_epoch = epoch
        self._bar.update(done - self._bar.n)

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self.mode == "none":
            return
        self.close()
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

    def close(self) -> None:
        """Remove the current bar, if any (the next step starts a new one)."""
        if self._bar is not None:
            self._bar.close()
            self._bar, self._bar_epoch = None, None


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
