"""The two feature spaces of the offline metrics (no pretrained weights can be downloaded here).

- `FeatureNet`: a small CNN classifier trained in-project on the procedural data (kind + eczema /
  healthy + lesion class; see feature_training.py). Its global-average-pooled last conv layer is the
  feature vector; its logits give the eczema-vs-healthy score used for the CycleGAN direction test.
  Saved as ONNX (input "image" [N, 3, S, S] in [-1, 1]; outputs "features", "logits"; classes and
  training facts in metadata_props), so scoring needs only onnxruntime.
- `RandomFeatureNet`: a fixed random-init CNN whose weights are drawn from numpy's PCG64 with a seed
  (identical on every torch version). Features = per-channel mean and std of every layer, i.e. low-
  level colour/texture statistics that are sensitive to blur and noise (Naeem et al. 2020 found
  random embeddings useful for exactly that).

Why two: on the procedural renderer (n = 100 per kind, 128 px) the classifier space is blind to mild
Gaussian noise (sigma 15: FD 0.16 vs real-vs-real 0.21) and only weakly sees blur (radius 2: FD 0.33 vs
0.21) -- the renderer's own camera noise/blur taught it that invariance -- while the random space sees
both (FD 0.044 / 0.045 vs 0.009; C2ST 0.996 / 0.93). Both see mode dropping (coverage 0.39 / 0.63
vs 0.97 / 0.91).

Both take uint8 [N, H, W, 3] images through `Extractor.features`, which resizes them (PIL, bilinear,
antialiased) to the net's input size first, so models of any resolution are compared at one scale.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

#: Classes of the eczema-vs-healthy score (patches of the "eczema" kind).
ECZEMA_CLASS, HEALTHY_CLASS = "eczema/eczema", "eczema/healthy"
METADATA_KEY = "dermagan.feature_extractor"


def to_input(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, 3, size, size] in [-1, 1] (the model contract's x/127.5 - 1)."""
    images = np.asarray(images)
    assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == np.uint8, (images.shape, images.dtype)
    if images.shape[1:3] != (size, size):
        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR)) for im in images])
    return (images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


@dataclass
class Extractor:
    """A feature space: `run(x [N,3,S,S] float32) -> (features [N, D], logits [N, C] or None)`."""

    name: str
    input_size: int
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    classes: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    def _apply(self, images: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
        feats, logits = [], []
        for i in range(0, len(images), batch):
            f, lg = self.run(to_input(images[i:i + batch], self.input_size))
            feats.append(np.asarray(f, np.float32))
            if lg is not None:
                logits.append(np.asarray(lg, np.float32))
        return np.concatenate(feats), (np.concatenate(logits) if logits else None)

    def features(self, images: np.ndarray) -> np.ndarray:
        """float32 [N, D] features of uint8 [N, H, W, 3] images."""
        return self._apply(images)[0]

    def logits(self, images: np.ndarray) -> np.ndarray:
        logits = self._apply(images)[1]
        if logits is None:
            raise ValueError(f"feature space {self.name!r} has no classifier head")
        return logits

    def eczema_score(self, images: np.ndarray) -> np.ndarray:
        """logit(eczema patch) - logit(healthy patch) per image: > 0 reads as eczema."""
        missing = {ECZEMA_CLASS, HEALTHY_CLASS} - set(self.classes)
        if missing:
            raise ValueError(f"feature space {self.name!r} lacks the classes {sorted(missing)}; it has {self.classes}")
        lg = self.logits(images)
        return lg[:, self.classes.index(ECZEMA_CLASS)] - lg[:, self.classes.index(HEALTHY_CLASS)]


# ---------------------------------------------------------------- networks (torch only here)

def _torch():
    import torch  # imported lazily: loading an ONNX extractor needs no torch

    return torch


def build_feature_net(num_classes: int, width: int = 32, feature_dim: int = 128):
    """The in-project classifier: 4 stride-2 conv blocks (GroupNorm, batch-independent) -> GAP -> linear."""
    torch = _torch()
    nn = torch.nn

    def block(cin: int, cout: int) -> list:
        return [nn.Conv2d(cin, cout, 3, 2, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1), nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True)]

    class FeatureNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*block(3, width), *block(width, 2 * width), *block(2 * width, 4 * width),
                                      *block(4 * width, feature_dim))
            self.head = nn.Linear(feature_dim, num_classes)
            self.config = {"num_classes": num_classes, "width": width, "feature_dim": feature_dim}

        def forward(self, x):  # x: (N, 3, S, S) in [-1, 1]
            f = self.body(x).mean(dim=(2, 3))  # (N, feature_dim)
            return f, self.head(f)  # features, logits (N, C)

    return FeatureNet()


RANDOM_WIDTHS = (16, 32, 64, 64)  # -> 2 x 176 = 352 features, fewer than the default --n 500


def build_random_net(seed: int = 0, widths: tuple[int, ...] = RANDOM_WIDTHS):
    """Fixed random-init CNN (numpy-seeded He init); forward -> per-layer channel mean and std.

    The first layer's filters are made zero-mean over their 3x3 window: pure local-contrast
    detectors, blind to overall skin tone (which already dominates the image statistics), so
    this space reacts to texture, blur and noise."""
    torch = _torch()
    nn = torch.nn
    rng = np.random.default_rng(seed)

    class RandomFeatureNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            convs, cin = [], 3
            for w in widths:
                conv = nn.Conv2d(cin, w, 3, 2, 1)
                weight = rng.normal(0.0, np.sqrt(2.0 / (cin * 9)), size=(w, cin, 3, 3))
                if not convs:
                    weight -= weight.mean(axis=(2, 3), keepdims=True)
                conv.weight.data = torch.from_numpy(weight.astype(np.float32))
                conv.bias.data.zero_()
                convs.append(conv)
                cin = w
            self.convs = nn.ModuleList(convs).requires_grad_(False)

        def forward(self, x):  # x: (N, 3, S, S)
            stats = []
            for conv in self.convs:
                x = torch.relu(conv(x))
                stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
            return torch.cat(stats, dim=1)  # (N, 2 * sum(widths))

    return RandomFeatureNet().eval()


def torch_extractor(module, *, name: str, input_size: int, classes: list[str] | None = None,
                    facts: dict | None = None) -> Extractor:
    """Wrap a torch module (FeatureNet or RandomFeatureNet) as an Extractor (eval mode, no grad)."""
    torch = _torch()
    module.eval()

    def run(x: np.ndarray):
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        if isinstance(out, tuple):
            return out[0].numpy(), out[1].numpy()
        return out.numpy(), None

    return Extractor(name=name, input_size=input_size, run=run, classes=list(classes or []), facts=dict(facts or {}))


def random_extractor(seed: int = 0, input_size: int = 64, widths: tuple[int, ...] = RANDOM_WIDTHS) -> Extractor:
    """The second feature space: the seeded random-init network."""
    return torch_extractor(build_random_net(seed, widths), name=f"random-init-s{seed}", input_size=input_size,
                           facts={"seed": seed, "widths": list(widths)})


# ---------------------------------------------------------------- ONNX save / load

def save_extractor(module, path: Path | str, *, classes: list[str], input_size: int, facts: dict) -> Path:
    """Export a trained FeatureNet to one ONNX file with its classes and facts in metadata_props."""
    torch = _torch()
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    x = torch.zeros(1, 3, input_size, input_size)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and GroupNorm trace notes
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["image"], output_names=["features", "logits"],
                          dynamic_axes={"image": {0: "N"}, "features": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    meta = {"classes": classes, "input_size": input_size, **facts}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    onnx.save(model, str(path))
    return path


def load_extractor(path: Path | str) -> Extractor:
    """Load an ONNX feature extractor written by `save_extractor` (needs only onnxruntime)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature extractor not found (train one with "
                                f"'python -m dermagan.training.metrics.feature_training --out {path}')")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    raw = sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: not a dermagan feature extractor (no {METADATA_KEY!r} metadata)")
    meta = json.loads(raw)

    def run(x: np.ndarray):
        f, lg = sess.run(["features", "logits"], {"image": x})
        return f, lg

    return Extractor(name=f"in-project:{path.name}", input_size=int(meta["input_size"]), run=run,
                     classes=list(meta["classes"]), facts=meta)

