"""The device runner: forward passes of every fold with nnU-Net's mirroring TTA, batched.

nnU-Net runs flips one by one; batching them is the same arithmetic. Every call has the same batch
size (the last batch is padded), because on the CPU a network's output for a sample can change in
the last bits with the batch size, and part-count invariance needs identical bits. On CUDA the
forward runs under autocast, as nnU-Net's predictor does.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

log = logging.getLogger("vesuvius_inference.runner")


def resolve_device(requested: str) -> Any:
    """The torch device to use; a CUDA request without a GPU falls back to CPU with one warning line."""
    import torch

    from .errors import BadArguments

    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("no CUDA GPU is available: running on the CPU (pass --device cpu to silence this)")
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError:
        raise BadArguments(f"--device {requested!r} is not a torch device (use cuda, cuda:1 or cpu)") from None


class Runner:
    """``runner(x)`` -> float32 logits (B, C, p...) averaged over flips and folds, on the device."""

    def __init__(self, model: Any, device: Any, tta: bool, batch_size: int) -> None:
        import torch

        self.torch = torch
        self.model = model.to(device)
        self.device = device
        axes = model.mirror_axes if tta else None
        self.combos: list[tuple[int, ...]] = []
        if axes:
            dims = [a + 2 for a in axes]
            self.combos = [c for i in range(len(dims)) for c in itertools.combinations(dims, i + 1)]
        self.batch_size = batch_size

    @property
    def passes_per_patch(self) -> int:
        return (1 + len(self.combos)) * len(self.model.networks)

    def __call__(self, xt: Any) -> Any:
        torch = self.torch
        b = xt.shape[0]
        batch = torch.cat([xt] + [torch.flip(xt, c) for c in self.combos]) if self.combos else xt
        total = None
        with torch.inference_mode():
            for net in self.model.networks:
                if self.device.type == "cuda":
                    with torch.autocast("cuda"):
                        out = net(batch)
                else:
                    out = net(batch)
                out = out.float()
                pred = out[:b].clone()
                for k, c in enumerate(self.combos):
                    pred += torch.flip(out[(k + 1) * b:(k + 2) * b], c)
                if self.combos:
                    pred /= len(self.combos) + 1
                total = pred if total is None else total + pred
            if len(self.model.networks) > 1:
                total /= len(self.model.networks)
        return total
