"""What rank 0 shows a person while training: a tqdm bar per epoch on a terminal (the debug
executor), plain lines with an ETA in a job's log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


def say(text: str) -> None:
    print(text, file=sys.stdout, flush=True)


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class EpochProgress:
    """One epoch's progress; silent on every rank but rank 0 (`show`)."""

    def __init__(
        self, epoch: int, epochs: int, steps: int, first_step: int, global_batch: int, show: bool
    ) -> None:
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.global_batch = global_batch
        self.show = show
        self.bar = (
            tqdm(total=steps, initial=first_step, desc=f"epoch {epoch + 1}/{epochs}", unit="step")
            if show and sys.stdout.isatty()
            else None
        )

    def update(self, step: int, loss: float, lr: float, alpha: float, images_per_s: float) -> None:
        """`step` steps of the epoch are done."""
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"loss {loss:.4f} lr {lr:.4g} alpha {alpha:.3f} {images_per_s:.0f} img/s"
            )
            self.bar.update(step - self.bar.n)
        elif self.show:
            remaining = (self.epochs - self.epoch) * self.steps - step
            eta = remaining * self.global_batch / max(images_per_s, 1e-9)
            say(
                f"epoch {self.epoch + 1}/{self.epochs} step {step}/{self.steps} "
                f"loss {loss:.4f} lr {lr:.4g} alpha_sgd {alpha:.3f} "
                f"{images_per_s:.0f} img/s eta {format_eta(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
