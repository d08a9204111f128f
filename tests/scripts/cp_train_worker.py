"""One process of the --context-parallel training test (tests/scripts/test_context_parallel_cli.py runs it alone
and under torch.distributed.run): ``linattn-train`` on the given flags, with the Trainer's first training step
recorded to CP_RECORD.rank<R>.pt: this rank's loss (as the Trainer returns it, before the world's mean) and the
parameter gradients after the backward (after DDP's average, before clipping)."""
import os
import sys

import torch

from linattn_models.cli import train as train_cli
from linattn_models.cli import trainer as trainer_mod

_base = trainer_mod._make_trainer_class


def _recording_trainer_class():
    class Recording(_base()):
        _recorded = False

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if not self._recorded:
                self._recorded = True
                params = self.accelerator.unwrap_model(model).named_parameters()
                torch.save({"loss": loss.detach().double().item(),
                            "grads": {n: p.grad.detach().clone() for n, p in params if p.grad is not None}},
                           f"{os.environ['CP_RECORD']}.rank{os.environ.get('RANK', '0')}.pt")
            return loss

    return Recording


if __name__ == "__main__":
    trainer_mod._make_trainer_class = _recording_trainer_class  # build_trainer looks it up in its module
    train_cli.main(sys.argv[1:])
