"""Images for ViLT-style models with PIL and torch only (no torchvision).

ViLT's "pixelbert" transform: resize so the shorter side is 384 and the longer side at most 640
(aspect ratio kept), round both down to a multiple of the patch size, normalise with mean = std =
0.5. A batch is zero-padded to its largest image, with a pixel mask marking the real pixels.
Training can add RandAugment (2 ops, magnitude 9) before the resize, as ViLT's `*_randaug` configs.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps, UnidentifiedImageError

from .text import DataError


def decode_image(data: bytes, where: str = "") -> Image.Image:
    """Raw file bytes -> an RGB PIL image; a clear DataError naming `where` if PIL cannot read it."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{where}: cannot decode the image ({e})") from None
    if img.mode != "RGB":  # palette, grey, RGBA, CMYK...: the model expects 3 channels
        img = img.convert("RGB")
    return img


def vilt_size(width: int, height: int, shorter: int = 384, longer: int = 640, patch: int = 32) -> tuple[int, int]:
    """(new_width, new_height) of ViLT's MinMaxResize, rounded down to multiples of `patch`."""
    scale = shorter / min(width, height)
    if height < width:
        new_h, new_w = shorter, scale * width
    else:
        new_h, new_w = scale * height, shorter
    if max(new_h, new_w) > longer:
        s = longer / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    return max(patch, new_w // patch * patch), max(patch, new_h // patch * patch)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float tensor normalised to [-1, 1]."""
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return (torch.from_numpy(arr).permute(2, 0, 1) - 0.5) / 0.5


@dataclass(frozen=True)
class ImageSpec:
    """How a task's images are sized: shorter side, longest side allowed, patch size (ViLT: 384/640/32)."""

    shorter: int = 384
    longer: int = 640
    patch: int = 32

    def transform(self, randaugment: bool = False) -> ImageTransform:
        return ImageTransform(randaugment=randaugment, spec=self)

    def resize_normalize(self, img: Image.Image) -> torch.Tensor:
        w, h = vilt_size(*img.size, self.shorter, self.longer, self.patch)
        return to_tensor(img.resize((w, h), Image.BICUBIC))

    @property
    def largest(self) -> tuple[int, int]:
        """(H, W) of the largest image the transform produces (landscape), for FLOP counting."""
        w, h = vilt_size(10_000, int(10_000 * self.shorter / self.longer) + 1, self.shorter, self.longer, self.patch)
        return h, w


class ImageTransform:
    """(optional RandAugment) then a spec's resize + normalisation; `without_augmentation()` for evaluation."""

    def __init__(self, shorter: int = 384, longer: int = 640, patch: int = 32, randaugment: bool = False,
                 spec=None):
        self.spec = spec if spec is not None else ImageSpec(shorter, longer, patch)
        self.randaugment = RandAugment() if randaugment else None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.randaugment is not None:
            img = self.randaugment(img)
        return self.spec.resize_normalize(img)

    def without_augmentation(self) -> ImageTransform:
        return ImageTransform(spec=self.spec)


def pad_images(images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (3, H_i, W_i) -> pixel_values (B, 3, H, W) zero-padded, pixel_mask (B, H, W) 1 on real pixels."""
    h = max(x.shape[1] for x in images)
    w = max(x.shape[2] for x in images)
    values = torch.zeros(len(images), 3, h, w)
    mask = torch.zeros(len(images), h, w, dtype=torch.long)
    for i, x in enumerate(images):
        values[i, :, : x.shape[1], : x.shape[2]] = x
        mask[i, : x.shape[1], : x.shape[2]] = 1
    return values, mask


# ---- RandAugment (Cubuk et al. 2020) with PIL ops; magnitudes on the paper's 0..10 scale -------------
def _level(m: float, maximum: float) -> float:
    return m / 10.0 * maximum


def _signed(v: float, rng: random.Random) -> float:
    return v if rng.random() < 0.5 else -v


def _shear_x(img, m, rng):
    return img.transform(img.size, Image.AFFINE, (1, _signed(_level(m, 0.3), rng), 0, 0, 1, 0), fillcolor=(128,) * 3)


def _shear_y(img, m, rng):
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, _signed(_level(m, 0.3), rng), 1, 0), fillcolor=(128,) * 3)


def _translate_x(img, m, rng):
    dx = _signed(_level(m, 0.45) * img.size[0], rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, dx, 0, 1, 0), fillcolor=(128,) * 3)


def _translate_y(img, m, rng):
    dy = _signed(_level(m, 0.45) * img.size[1], rng)
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, dy), fillcolor=(128,) * 3)


def _enhance(cls):
    return lambda img, m, rng: cls(img).enhance(1.0 + _signed(_level(m, 0.9), rng))


OPS = {
    "identity": lambda img, m, rng: img,
    "autocontrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "equalize": lambda img, m, rng: ImageOps.equalize(img),
    "rotate": lambda img, m, rng: img.rotate(_signed(_level(m, 30), rng), fillcolor=(128,) * 3),
    "solarize": lambda img, m, rng: ImageOps.solarize(img, 256 - int(_level(m, 256))),
    "posterize": lambda img, m, rng: ImageOps.posterize(img, max(1, 8 - int(_level(m, 4)))),
    "color": _enhance(ImageEnhance.Color),
    "contrast": _enhance(ImageEnhance.Contrast),
    "brightness": _enhance(ImageEnhance.Brightness),
    "sharpness": _enhance(ImageEnhance.Sharpness),
    "shear_x": _shear_x,
    "shear_y": _shear_y,
    "translate_x": _translate_x,
    "translate_y": _translate_y,
}


class RandAugment:
    """`n` random ops at magnitude `m`. No flips: they would swap "left" and "right" in the text."""

    def __init__(self, n: int = 2, m: float = 9):
        self.n, self.m = n, m

    def __call__(self, img: Image.Image) -> Image.Image:
        # drawn from torch's RNG: seeded per run (and per loader worker), restored on resume
        rng = random.Random(int(torch.randint(0, 2**31 - 1, ()).item()))
        for name in rng.sample(sorted(OPS), self.n):
            img = OPS[name](img, self.m, rng)
        return img


# ---- square images for CLIP/DINOv2-style encoders (LaVIN) --------------------------------------------
NORMALIZATION = {
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # ViLT
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),  # OpenAI CLIP, METER
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # DINOv2, ViT; LaVIN's ScienceQA (with CLIP)
}


@dataclass(frozen=True)
class SquareImageSpec:
    """size x size images, bicubic, normalised with `NORMALIZATION[norm]`.

    `resize="crop"`: resize the shorter side to `size`, centre-crop (CLIP's preprocessing, METER).
    `resize="stretch"`: resize straight to size x size, aspect ratio not kept, nothing cut off (LaVIN's
    ScienceQA preprocessing, docs/lavin.md)."""

    size: int = 224
    norm: str = "clip"
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.norm not in NORMALIZATION:
            raise ValueError(f"image norm {self.norm!r}: expected one of {sorted(NORMALIZATION)}")
        if self.resize not in ("crop", "stretch"):
            raise ValueError(f"image resize {self.resize!r}: expected 'crop' or 'stretch'")

    @property
    def largest(self) -> tuple[int, int]:
        return self.size, self.size

    def transform(self, randaugment: bool = False) -> ImageTransform:
        return ImageTransform(randaugment=randaugment, spec=self)

    def resize_normalize(self, img: Image.Image) -> torch.Tensor:
        return self(img)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if self.resize == "stretch":
            img = img.resize((self.size, self.size), Image.BICUBIC)
        else:
            w, h = img.size
            s = self.size / min(w, h)
            img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
            left, top = (img.size[0] - self.size) // 2, (img.size[1] - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        mean, std = (torch.tensor(v)[:, None, None] for v in NORMALIZATION[self.norm])
        arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
        return (torch.from_numpy(arr).permute(2, 0, 1) - mean) / std
