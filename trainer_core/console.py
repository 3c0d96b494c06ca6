"""What a rank shows on its terminal and log: no warnings the user cannot act on, and a progress bar in steps.

A new user reads every warning as something they did wrong. The ones below come from the libraries zerorun pins,
triggered by zerorun's own choices, not by anything in the user's config; each is silenced by its exact message
and the module that raises it, so the same warning from anywhere else (the user's code) still shows. What
zerorun can fix where it triggers a warning, it fixes there instead (the checkpoint save passes weights_only).

The progress bar: training runs for trainer.max_steps with no epoch limit (max_epochs=-1), and Lightning's bar
reads "Epoch 4/-2" then. StepProgressBar shows the epoch and the step out of max_steps.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

# (message regex, category, module regex) of warnings zerorun knowingly triggers and the user cannot act on
KNOWN_WARNINGS = (
    # torchdata's StatefulDataLoader (the data loader whose position resumes exactly) calls torch.set_vital,
    # which torch deprecates; nothing to do until torchdata drops the call
    (r"'set_vital' is deprecated", UserWarning, r"torchdata\.stateful_dataloader"),
    # Lightning's own pytree helper builds LeafSpec(), which torch deprecates; raised inside Lightning
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"pytorch_lightning\.utilities\._pytree"),
    # DeepSpeed's ZeRO gathers with the collective torch deprecates (raised in torch's wrapper of it)
    (r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning, r"torch\.distributed\.c10d_logger"),
)
# (logger, message fragment) of log lines that say nothing the user can act on
KNOWN_LOG_LINES = (
    # Lightning's tip to install litlogger, printed by every Trainer without a LitLogger: an advertisement (the
    # logger rank_zero_info writes to, as Lightning names it on import)
    ("pytorch_lightning.utilities.rank_zero", "try installing [litlogger]"),
    # transformers names the loss of GPT2LMHeadModel (the causal backbones) by a class-name pattern it does not
    # match, says so, and uses the causal LM loss: the loss this task wants
    ("transformers.modeling_utils", "`loss_type=None` was set in the config but it is unrecognized"),
)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet() -> None:
    """Silence KNOWN_WARNINGS and KNOWN_LOG_LINES in this process (idempotent: a second call adds nothing)."""
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, fragment in KNOWN_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_DropMessages(fragment))


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, described by epoch and step ("Epoch 2 · step 312/600"), without v_num (the
    logger version, 0 in every run folder)."""

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch}"
        trainer = self.trainer
        if trainer.max_steps is not None and trainer.max_steps > 0:
            text += f" · step {trainer.global_step}/{trainer.max_steps}"
        elif trainer.max_epochs is not None and trainer.max_epochs > 0:
            text += f"/{trainer.max_epochs - 1}"
        return text

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None:
            text = self._get_train_description(trainer.current_epoch)
            style = self.theme.description
            self.progress.update(self.train_progress_bar_id, description=f"[{style}]{text}" if style else text)
            self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def progress_bars(enabled: bool) -> list[pl.Callback]:
    """The callbacks that draw the progress bar: one where it is enabled, none elsewhere (Lightning refuses a
    progress bar callback with enable_progress_bar=False)."""
    return [StepProgressBar()] if enabled else []
