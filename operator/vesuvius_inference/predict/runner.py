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

from vesuvius_inference.store import cpuquota

log = logging.getLogger("vesuvius_inference.predict.runner")


AUTO = "auto"
_CHECK = ("check CUDA_VISIBLE_DEVICES (now {visible}), the NVIDIA driver (nvidia-smi) and, on Kubernetes, the pod's "
          "runtimeClassName and the NVIDIA device plugin (nvidia.com/gpu); or pass {cpu}")


def resolve_device(requested: str, asked: str | None = None, cpu_hint: str = "--device cpu") -> Any:
    """The torch device for ``--device``. ``auto`` takes a CUDA GPU when one is visible, else the CPU
    (one line says so); ``cuda``/``cuda:N`` asked for and unusable raises DeviceUnavailable (exit 69):
    never a silent CPU run on a GPU node. A device type torch knows but this program does not run on
    (``mps``, a Mac habit; ``xpu``) is exit 69 too, naming what this process can use; a name that is no
    device at all is a bad argument (exit 2). Called before the part is claimed, so nothing is written."""
    import os

    import torch

    from vesuvius_inference.contract.errors import BadArguments, DeviceUnavailable

    if requested == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("no CUDA GPU is visible: running on the CPU (--device cuda makes this an error)")
        return torch.device("cpu")
    asked = asked or f"--device {requested}"
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise BadArguments(f"{asked}: {requested!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cpu":
        return device
    if device.type != "cuda":  # mps, xpu, ...: torch knows the name, this program runs on the CPU and CUDA only
        usable = f"cpu and cuda:0..cuda:{n - 1}" if n else \
            f"the CPU only (no CUDA device: torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
        raise DeviceUnavailable(f"{asked}: this program runs the model on the CPU or a CUDA GPU, not on "
                                f"{device.type}; this process can use {usable}: pass {cpu_hint}"
                                f"{' or cuda' if n else ''}")
    check = _CHECK.format(cpu=cpu_hint, visible=repr(os.environ["CUDA_VISIBLE_DEVICES"]) if "CUDA_VISIBLE_DEVICES" in os.environ
                          else "unset")
    if n == 0:
        raise DeviceUnavailable(f"{asked}: this process sees no CUDA GPU (torch {torch.__version__}, "
                                f"CUDA build {torch.version.cuda or 'none'}); {check}")
    if device.index is not None and device.index >= n:
        raise DeviceUnavailable(f"{asked}: this process sees {n} CUDA GPU(s), cuda:0..cuda:{n - 1}; "
                                f"{check}")
    try:
        torch.zeros(1, device=device)  # initialises CUDA on it: a driver/runtime mismatch fails here, not mid-run
    except RuntimeError as e:
        raise DeviceUnavailable(f"{asked}: CUDA failed to initialise ({' '.join(str(e).split())}); "
                                f"{check}") from None
    return device


class Runner:
    """``runner(x)`` -> float32 logits (B, C, p...) averaged over flips and folds, on the device.

    The patches and their flips go through each network as one batch. On CUDA the batch that fits is
    bounded by the device's free memory: a forward that runs out of memory is split in halves (and
    stays split for the rest of the run), as nnU-Net's predictor falls back rather than fails. On the
    CPU the batch is never split, so every patch sees the same batch composition (bit-identical
    results for any part count). ``compile`` wraps each network in ``torch.compile``.
    """

    def __init__(self, model: Any, device: Any, tta: bool, batch_size: int, compile: bool = False) -> None:
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
        self.networks = [torch.compile(n) for n in model.networks] if compile else list(model.networks)
        if device.type == "cuda":  # the same patch gives the same bits whichever part runs it
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        self.split: int | None = None  # samples per forward after an out-of-memory fallback

    @property
    def passes_per_patch(self) -> int:
        return (1 + len(self.combos)) * len(self.model.networks)

    def _forward(self, net: Any, batch: Any) -> Any:
        torch = self.torch
        if self.device.type != "cuda":
            return net(batch)
        while True:
            step = self.split or batch.shape[0]
            try:
                with torch.autocast("cuda"):
                    if step >= batch.shape[0]:
                        return net(batch)
                    return torch.cat([net(batch[i:i + step]) for i in range(0, batch.shape[0], step)])
            except torch.cuda.OutOfMemoryError:
                if step == 1:
                    raise
                self.split = max(1, step // 2)
                torch.cuda.empty_cache()
                log.warning("out of GPU memory for %d samples per forward: using %d", step, self.split)

    def __call__(self, xt: Any) -> Any:
        torch = self.torch
        b = xt.shape[0]
        batch = torch.cat([xt] + [torch.flip(xt, c) for c in self.combos]) if self.combos else xt
        total: Any = None  # a torch tensor once the first network ran
        with torch.no_grad():  # not inference_mode: the caller quantises the logits in place
            for net in self.networks:
                out = self._forward(net, batch).float()  # autocast's float16 -> float32; no copy on the CPU
                pred = out[:b]  # views of this call's output, summed in place: no copies
                for k, c in enumerate(self.combos):
                    pred += torch.flip(out[(k + 1) * b:(k + 2) * b], c)
                if self.combos:
                    pred /= len(self.combos) + 1
                total = pred if total is None else total.add_(pred)
            if len(self.networks) > 1:
                total /= len(self.networks)
        return total


def size_torch(p: cpuquota.ThreadPlan | None = None) -> cpuquota.ThreadPlan:
    """Set torch's pools to the plan (torch is imported by the caller already: the engine's). Here, not in
    cpuquota.py, because finalize and blend size their threads from the same plan without torch."""
    import torch

    p = p or cpuquota.plan()
    torch.set_num_threads(p.torch_intra)
    try:
        torch.set_num_interop_threads(p.torch_interop)
    except RuntimeError:  # only before the first inter-op parallel work; later it keeps what it has
        pass
    return p
