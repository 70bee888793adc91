"""Train the demo's small nnU-Net model on synthetic scrolls, on the CPU, in bounded time.

``python -m vesuvius_inference.demo.train --out DIR --seconds 900 --threads 1``

The demo must run without downloads, so its model is trained here and shipped in the package. To
make the demo exercise the real inference path, everything nnU-Net decides is taken from nnU-Net:
the network is built from the plans by nnU-Net's trainer (``nnunet_folder.build_network``), the
input is normalised by nnU-Net's own ``CTNormalization`` with foreground intensity statistics
computed the way nnU-Net's fingerprint does, and the output is a regular nnU-Net v2 model folder
that ``nnUNetPredictor.initialize_from_trained_model_folder`` loads. Only the training loop is
plain PyTorch (nnU-Net's trainer needs a preprocessed dataset on disk and runs for days); it keeps
the parts that matter here: random patches, random flips, cross-entropy + soft Dice, poly LR decay.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vesuvius_inference.demo.synthetic import dice, make_scroll
from vesuvius_inference.model.nnunet_folder import (
    build_network,
    make_dataset_json,
    make_plans,
    write_model_folder,
)

log = logging.getLogger("vesuvius_inference.demo.train")

PATCH = (64, 64, 64)
FEATURES = (8, 16, 32, 64)
# Training scrolls come from seeds >= TRAIN_SEED_BASE only, so any seed below it (the demo's 1234,
# the tests' seeds) is a scroll the model has never seen. Shapes vary so the model sees different
# numbers of wraps and the zero margin at several scales.
TRAIN_SEED_BASE = 100_000
TRAIN_SHAPES = ((96, 160, 160), (64, 128, 128), (96, 192, 192), (64, 144, 144))
POOL_SIZE = 12
EVAL_SEED = 1234


def intensity_properties(volumes: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> dict[str, float]:
    """Foreground intensity statistics as nnU-Net's dataset fingerprint computes them.

    nnU-Net takes the voxels under a nonzero label (it samples them; here all are used) and stores
    mean, std, median, min, max and the 0.5 / 99.5 percentiles; ``CTNormalization`` clips to the
    percentiles and standardises with mean and std.
    """
    fg = np.concatenate([np.asarray(v)[np.asarray(lab) > 0].astype(np.float64) for v, lab in zip(volumes, labels)])
    if fg.size == 0:
        raise ValueError("no foreground voxels to compute intensity properties from")
    return {
        "mean": float(np.mean(fg)), "std": float(np.std(fg)), "median": float(np.median(fg)),
        "min": float(np.min(fg)), "max": float(np.max(fg)),
        "percentile_00_5": float(np.percentile(fg, 0.5)), "percentile_99_5": float(np.percentile(fg, 99.5)),
    }


def ct_normalize(volume: np.ndarray, properties: dict[str, float]) -> np.ndarray:
    """float32 copy of ``volume`` normalised by nnU-Net's own CTNormalization class."""
    from nnunetv2.preprocessing.normalization.default_normalization_schemes import CTNormalization

    norm = CTNormalization(use_mask_for_norm=False, intensityproperties=properties, target_dtype=np.float32)
    return norm.run(np.array(volume, dtype=np.float32))


def _batch(vols: Sequence[np.ndarray], labs: Sequence[np.ndarray], rng: np.random.Generator, batch_size: int,
           patch: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Random patches with random flips on all three axes (the predictor may mirror on all three)."""
    xs, ys = [], []
    for _ in range(batch_size):
        k = int(rng.integers(len(vols)))
        v, lab = vols[k], labs[k]
        o = [int(rng.integers(0, s - p + 1)) for s, p in zip(v.shape, patch)]
        sl = tuple(slice(a, a + p) for a, p in zip(o, patch))
        x, y = v[sl], lab[sl]
        for ax in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, ax), np.flip(y, ax)
        xs.append(np.ascontiguousarray(x))
        ys.append(np.ascontiguousarray(y))
    return np.stack(xs)[:, None], np.stack(ys)


def _step(net: Any, opt: Any, ce: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """One optimiser step on cross-entropy + (1 - batch soft Dice of the foreground); (loss, soft Dice)."""
    import torch

    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    logits = net(xt)
    prob = torch.softmax(logits, 1)[:, 1]
    fg = (yt == 1).float()
    soft_dice = (2 * (prob * fg).sum() + 1) / (prob.sum() + fg.sum() + 1)
    loss = ce(logits, yt) + (1 - soft_dice)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), soft_dice.item()


def train(out: str | Path, seconds: float = 900.0, seed: int = 0, *, batch_size: int = 2, lr: float = 3e-3,
          patch: Sequence[int] = PATCH, threads: int | None = None,
          scrolls: Sequence[tuple[Sequence[int], int]] | None = None, refresh_every: int = 8) -> Path:
    """Train for ``seconds`` of wall time and write the nnU-Net model folder ``out``.

    Patches come from a pool of synthetic scrolls (``scrolls`` as ``(shape, seed)``; by default
    ``POOL_SIZE`` of them) and every ``refresh_every`` steps the oldest is replaced by a scroll with
    a fresh seed (0 keeps the pool fixed). A fixed handful of scrolls is not enough: each seed draws
    its own sheet thickness, spacing and crush, and a model trained on six of them learned their
    thickness and under-segmented a thicker unseen scroll (Dice 0.87 where thresholding gets 0.96).
    The intensity properties are computed once from the first pool; they do not drift between seeds.

    ``threads`` sets torch's intra-op threads. On a CPU shared with other busy processes, use 1:
    with 2 threads on 2 contended cores, Conv3d backward steps varied from 1.3 s to 10 s (OpenMP
    threads waiting on each other), while 1 thread stayed at 1.9 s per 2 x 64^3 batch.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    next_seed = TRAIN_SEED_BASE + 1000 * seed

    def fresh() -> tuple[tuple[int, ...], int]:
        nonlocal next_seed
        next_seed += 1
        return tuple(TRAIN_SHAPES[next_seed % len(TRAIN_SHAPES)]), next_seed

    t = time.perf_counter()
    pool = list(scrolls) if scrolls is not None else [fresh() for _ in range(POOL_SIZE)]
    data = [make_scroll(shape, seed=s) for shape, s in pool]
    props = intensity_properties([v for v, _ in data], [lab for _, lab in data])
    vols = [ct_normalize(v, props) for v, _ in data]
    labs = [lab for _, lab in data]
    del data
    log.info("%d training scrolls in %.1f s; foreground intensities mean %.1f std %.1f, clip [%.0f, %.0f]",
             len(vols), time.perf_counter() - t, props["mean"], props["std"], props["percentile_00_5"],
             props["percentile_99_5"])

    plans = make_plans(patch, FEATURES, normalization="CTNormalization", intensity_properties=props)
    dataset_json = make_dataset_json(num_classes=2)
    net = build_network(plans, dataset_json, deep_supervision=False)
    n_params = sum(p.numel() for p in net.parameters())
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-5)
    ce = torch.nn.CrossEntropyLoss()
    log.info("PlainConvUNet %s, %d parameters, patch %s, batch %d, %.0f s budget",
             list(FEATURES), n_params, "x".join(map(str, patch)), batch_size, seconds)

    net.train()
    t0, step, recent, oldest, seen = time.perf_counter(), 0, [], 0, len(vols)
    while (elapsed := time.perf_counter() - t0) < seconds:
        if refresh_every and step and step % refresh_every == 0:
            shape, s = fresh()
            volume, labels = make_scroll(shape, seed=s)
            vols[oldest], labs[oldest] = ct_normalize(volume, props), labels
            oldest, seen = (oldest + 1) % len(vols), seen + 1
        for group in opt.param_groups:  # nnU-Net's poly schedule, over time instead of epochs
            group["lr"] = lr * (1 - elapsed / seconds) ** 0.9
        loss, soft_dice = _step(net, opt, ce, *_batch(vols, labs, rng, batch_size, patch))
        step += 1
        recent.append(soft_dice)
        if step % 25 == 0:
            log.info("step %5d  %5.0f s  lr %.2e  loss %.3f  soft Dice (last 25) %.3f  scrolls seen %d", step,
                     time.perf_counter() - t0, opt.param_groups[0]["lr"], loss, float(np.mean(recent)), seen)
            recent.clear()
    net.eval()
    # The state_dict itself, not copies: PlainConvUNet registers each conv twice (``conv`` and
    # ``all_modules``) and the decoder holds the encoder, so copying tensors would triple the file.
    folder = write_model_folder(out, plans, dataset_json, fold_weights={0: net.state_dict()}, folds=(0,),
                                mirror_axes=(0, 1, 2))
    log.info("trained %d steps in %.0f s -> %s", step, time.perf_counter() - t0, folder)
    return folder


def load_predictor(model_dir: str | Path, tile_step_size: float = 0.5, use_mirroring: bool = False) -> Any:
    """nnU-Net's own predictor on the CPU for a model folder (strict state_dict loading)."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                device=torch.device("cpu"), perform_everything_on_device=False, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    return predictor


def predict_probability(predictor: Any, volume: np.ndarray) -> np.ndarray:
    """Foreground probability (float32, Z, Y, X) of ``volume`` with nnU-Net's sliding window."""
    import torch

    props = predictor.plans_manager.foreground_intensity_properties_per_channel["0"]
    x = torch.from_numpy(ct_normalize(volume, props)[None])
    with torch.no_grad():
        logits = predictor.predict_sliding_window_return_logits(x)
    return torch.softmax(logits.float(), 0)[1].numpy()


def evaluate(model_dir: str | Path, shape: Sequence[int] = (96, 160, 160), seed: int = EVAL_SEED) -> dict[str, float]:
    """Dice of argmax (probability >= 0.5) against the labels of an unseen synthetic scroll, and timings."""
    volume, labels = make_scroll(shape, seed=seed)
    t = time.perf_counter()
    predictor = load_predictor(model_dir)
    t_load = time.perf_counter() - t
    t = time.perf_counter()
    prob = predict_probability(predictor, volume)
    t_pred = time.perf_counter() - t
    return {"dice": dice(prob >= 0.5, labels), "load_s": t_load, "predict_s": t_pred,
            "voxels_per_s": float(np.prod(shape)) / t_pred}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m vesuvius_inference.demo.train",
                                 description="Train the demo's small nnU-Net model on synthetic scrolls.")
    ap.add_argument("--out", required=True, help="model folder to write (plans.json, dataset.json, fold_0/)")
    ap.add_argument("--seconds", type=float, default=900.0, help="training wall-time budget")
    ap.add_argument("--refresh_every", type=int, default=8, help="steps between fresh training scrolls (0: never)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared, busy CPU)")
    ap.add_argument("--no_eval", action="store_true", help="skip the Dice check on an unseen scroll")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    folder = train(a.out, a.seconds, a.seed, batch_size=a.batch_size, lr=a.lr, threads=a.threads,
                   refresh_every=a.refresh_every)
    if not a.no_eval:
        r = evaluate(folder)
        log.info("unseen scroll (seed %d, 96x160x160): Dice %.4f, predict %.1f s (%.0f voxels/s)", EVAL_SEED,
                 r["dice"], r["predict_s"], r["voxels_per_s"])


if __name__ == "__main__":
    main()
