"""A pod's start-up: loading a model built by the stock nnUNetTrainer imports neither the trainer (seaborn,
matplotlib and its font cache, built afresh in every pod) nor nnUNetPredictor (torch._dynamo, the
preprocessors), and builds the same networks nnUNetPredictor does (model.py, _plain_network). Every pod a
preemption or an outage replaces pays this start-up again while holding its GPU (issue 24)."""

from __future__ import annotations

import subprocess
import sys

from vesuvius_inference.contract.place import Place


def test_the_plain_trainer_path_builds_what_nnunetpredictor_builds(model2):
    import torch
    from vesuvius_inference.model import network as M
    from vesuvius_inference.model.files import open_model_files

    files = open_model_files(Place(str(model2)))
    fast = M.load_model(files)
    first_fold, first_ckpt = next(iter(files.checkpoints.items()))
    ref = M._predictor_network(str(model2), first_fold, first_ckpt)
    assert fast.num_input_channels == ref.num_input_channels
    assert fast.num_classes == int(ref.label_manager.num_segmentation_heads)
    assert fast.mirror_axes == tuple(ref.mirror_axes)
    assert fast.configuration_manager.patch_size == ref.configuration_manager.patch_size
    x = torch.randn(1, 1, *fast.patch_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.network.eval()(x)
        got = fast.networks[0](x)
    assert type(fast.networks[0]) is type(ref.network)
    assert torch.equal(got, want)
    assert len(fast.networks) == len(files.checkpoints) == 2
    with torch.no_grad():
        assert not torch.equal(fast.networks[1](x), got)  # each fold its own weights


def test_another_trainer_still_goes_through_nnunetpredictor(model2, tmp_path, monkeypatch):
    """A trainer that may override build_network_architecture is found and used by nnU-Net itself."""
    from vesuvius_inference.model import network as M
    from vesuvius_inference.model.files import open_model_files

    used = []
    real = M._predictor_network
    monkeypatch.setattr(M, "_predictor_network", lambda *a: used.append(a) or real(*a))
    monkeypatch.setattr(M, "PLAIN_TRAINERS", ())
    M.load_model(open_model_files(Place(str(model2))))
    assert used


def test_loading_a_plain_model_imports_no_plotting_and_no_dynamo(model2):
    code = ("import sys\nfrom vesuvius_inference.model import network as M\nfrom vesuvius_inference.model.files import "
            f"open_model_files\nfrom vesuvius_inference.contract.place import Place\nM.load_model(open_model_files(Place({str(model2)!r})))\n"
            "print(sorted(m for m in ('matplotlib', 'seaborn', 'torch._dynamo', "
            "'nnunetv2.training.nnUNetTrainer.nnUNetTrainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
