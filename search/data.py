"""Datasets kept in memory as uint8 tensors: Fashion-MNIST, a folder of images, synthetic.

Every loader checks what it reads and raises :class:`UserError` naming the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from search.errors import UserError

if TYPE_CHECKING:  # (search.config imports Hydra's OmegaConf: search.finetune runs without it)
    from search.config import Config, DataConfig

__all__ = ["Dataset", "FMNIST_CLASS_NAMES", "FMNIST_FILES", "FMNIST_INSTALL", "IMAGE_SUFFIXES",
           "folder_size", "image_sizes", "load_dataset", "load_fashion_mnist", "load_for",
           "load_image_folder", "make_synthetic", "size_note", "tensor_hash", "to_float"]

FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz",
}
FMNIST_INSTALL = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or "
                  "download the four files train-images-idx3-ubyte.gz, "
                  "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
                  "t10k-labels-idx1-ubyte.gz into a folder and pass data.root=FOLDER")
# Fashion-MNIST's label values 0-9 name these classes (Xiao et al. 2017).
FMNIST_CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Dataset:
    """Images as uint8 (N, C, H, W) tensors and int64 labels; the split of validation images
    is carved from the training set with a fixed seed."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    # The model's output i is class ``classes[i]``: an image folder's class folder names, or
    # the label values ("0", "1", ...); ``class_names`` says what they are, where known.
    classes: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    # Lines for the user about how the images were read (e.g. resized from mixed sizes).
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.classes = self.classes or [str(i) for i in range(self.num_classes)]
        self.class_names = self.class_names or list(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def size(self) -> int:
        return int(self.train_x.shape[2])

    def split(self, val_images: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(train indices, validation indices) into the training set."""
        n = len(self.train_y)
        val = min(val_images, n // 5)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        return perm[val:], perm[:val]

    def fingerprint(self) -> str:
        """Content hash of the data, for cache keys."""
        h = hashlib.sha256()
        for t in (self.train_x, self.train_y, self.test_x, self.test_y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t[: min(len(t), 2048)].numpy().tobytes())
        return h.hexdigest()[:16]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1] (what the exported models take)."""
    return x.float().div_(255.0)


def tensor_hash(t: torch.Tensor) -> str:
    """A short hash of a tensor's values (cache keys and fingerprints)."""
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


# ---- Fashion-MNIST ----------------------------------------------------------------------
def _read_idx(path: Path, magic: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"{path} is corrupt or truncated ({exc}); reinstall the dataset: "
                        + FMNIST_INSTALL) from None
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or struct.unpack(">I", raw[:4])[0] != magic:
        raise UserError(f"{path} is not an IDX file of the expected kind (bad header); "
                        "reinstall the dataset: " + FMNIST_INSTALL)
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: its header promises {int(np.prod(dims))} bytes "
                        f"of data, it has {body.size}; reinstall the dataset: "
                        + FMNIST_INSTALL)
    return body.reshape(dims)


def load_fashion_mnist(root: str | None) -> Dataset:
    from search.config import FASHION_MNIST_ROOT

    base = Path(root or FASHION_MNIST_ROOT).expanduser()
    missing = [n for n in FMNIST_FILES.values() if not (base / n).is_file()]
    if missing:
        raise UserError(f"Fashion-MNIST is not in {base} (missing {', '.join(missing)}): "
                        + FMNIST_INSTALL)
    arr = {k: _read_idx(base / n, 2051 if k.endswith("x") else 2049)
           for k, n in FMNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arr[f"{split}_x"]) != len(arr[f"{split}_y"]):
            raise UserError(f"Fashion-MNIST {split} images and labels differ in count in {base}; "
                            "reinstall the dataset: " + FMNIST_INSTALL)
        if arr[f"{split}_y"].max(initial=0) > 9:
            raise UserError(f"Fashion-MNIST {split} labels in {base} go above 9; the label "
                            "file is corrupt: " + FMNIST_INSTALL)
    return Dataset(
        "fashion_mnist",
        torch.from_numpy(arr["train_x"].copy()).unsqueeze(1),
        torch.from_numpy(arr["train_y"].astype(np.int64)),
        torch.from_numpy(arr["test_x"].copy()).unsqueeze(1),
        torch.from_numpy(arr["test_y"].astype(np.int64)),
        10,
        class_names=FMNIST_CLASS_NAMES,
    )


# ---- a folder of images -----------------------------------------------------------------
def _class_files(root: Path, classes: list[str] | None = None
                 ) -> tuple[list[str], list[tuple[Path, int]]]:
    """(the class names, every image file with its label) of a folder of class folders."""
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "test")
    classes = classes or found
    if len(classes) < 2:
        raise UserError(f"image folder {root} has {len(classes)} class folder(s) "
                        f"({', '.join(classes) or 'none'}); it needs one subfolder per class "
                        "and at least two classes, e.g. DIR/cat/1.png and DIR/dog/2.png")
    files = []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            files += [(p, label) for p in sorted(folder.glob("*"))
                      if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UserError(f"image folder {root} has class folders but no images (looked for "
                        f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    counts = np.bincount([label for _, label in files], minlength=len(classes))
    if (counts == 0).any():
        empty = [c for c, n in zip(classes, counts) if n == 0]
        raise UserError(f"image folder {root}: class folder(s) {', '.join(empty)} have no "
                        "images; add images or remove the folder")
    return classes, files


def _unreadable(path: Path, exc: Exception) -> UserError:
    return UserError(f"cannot read image {path} ({exc.__class__.__name__}); remove or replace "
                     "it")


def image_sizes(files: list[Path]) -> list[tuple[int, int]]:
    """(width, height) of each image, read from its header (the pixels are not decoded)."""
    from PIL import Image, UnidentifiedImageError

    sizes = []
    for path in files:
        try:
            with Image.open(path) as img:
                sizes.append(img.size)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
    return sizes


def folder_size(root: Path, sizes: list[tuple[int, int]]) -> tuple[int, str | None]:
    """The square size a folder's images are trained at when ``data.size`` is null, and a note
    for the user where they are not all of one square size (None where they are)."""
    shorter = np.array([min(w, h) for w, h in sizes])
    size = int(np.median(shorter))
    distinct = sorted(set(sizes))
    if len(distinct) == 1 and distinct[0][0] == distinct[0][1]:
        return size, None
    small = int((shorter < size).sum())
    kinds = (f"come in {len(distinct)} sizes (from {min(distinct, key=lambda s: s[0] * s[1])}"
             f" to {max(distinct, key=lambda s: s[0] * s[1])}, width x height)"
             if len(distinct) > 1 else f"are {distinct[0][0]} x {distinct[0][1]}, not square")
    return size, (f"note: the images of {root} {kinds}; each is resized to {size} x {size} px "
                  "(the median shorter side; non-square images are centre-cropped to a "
                  "square first)" + (f", {small} of them enlarged" if small else "")
                  + ". Set data.size=N to choose another size.")


def _read_images(files: list[tuple[Path, int]], in_chans: int, size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    x = np.empty((len(files), in_chans, size, size), dtype=np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("L" if in_chans == 1 else "RGB")
                if img.size != (size, size):
                    img = (img.resize((size, size)) if img.width == img.height
                           else ImageOps.fit(img, (size, size)))  # centre crop, then resize
                a = np.asarray(img, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        x[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return x, np.asarray([label for _, label in files], dtype=np.int64)


def load_image_folder(root: str | None, in_chans: int, size: int | None, seed: int = 0
                      ) -> Dataset:
    """A folder DIR/<class>/<image> (and an optional DIR/test/<class>/<image>), each image
    converted to ``in_chans`` channels and resized to ``size`` x ``size`` (None: the images'
    own size; see :func:`folder_size`). The dataset's ``notes`` say what was resized."""
    if not root:
        raise UserError("data=imagefolder needs data.root=DIR, a folder with one subfolder of "
                        "images per class")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise UserError(f"image folder {base} does not exist; pass data.root=DIR with one "
                        "subfolder of images per class")
    classes, files = _class_files(base)
    test_files = _class_files(base / "test", classes)[1] if (base / "test").is_dir() else []
    notes = []
    if size is None:  # (a set size was checked with the configuration: search.config)
        size, note = folder_size(base, image_sizes([p for p, _ in files + test_files]))
        notes += [note] if note else []
    x, y = _read_images(files, in_chans, size)
    if test_files:
        tx, ty = _read_images(test_files, in_chans, size)
    else:  # hold out 10% as the test split
        perm = np.random.default_rng(seed).permutation(len(y))
        n_test = max(1, len(y) // 10)
        tx, ty, x, y = x[perm[:n_test]], y[perm[:n_test]], x[perm[n_test:]], y[perm[n_test:]]
    return Dataset(f"imagefolder:{base.name}", torch.from_numpy(x), torch.from_numpy(y),
                   torch.from_numpy(tx), torch.from_numpy(ty), len(classes), classes=classes,
                   notes=notes)


# ---- synthetic ----------------------------------------------------------------------------
def make_synthetic(n: int, in_chans: int, size: int, num_classes: int, seed: int = 0) -> Dataset:
    """Class-dependent smooth patterns plus noise: learnable in a few steps, for tests."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, in_chans, 4, 4, generator=g)
    protos = torch.nn.functional.interpolate(protos, size=(size, size), mode="bilinear")

    def draw(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (m,), generator=g)
        x = protos[y] * 0.7 + torch.rand(m, in_chans, size, size, generator=g) * 0.3
        return (x * 255).round().to(torch.uint8), y

    train_x, train_y = draw(n)
    test_x, test_y = draw(max(64, n // 4))
    return Dataset("synthetic", train_x, train_y, test_x, test_y, num_classes)


def size_note(dataset: Dataset, val_images: int, train_images: int | None = None,
              proxy_val_images: int | None = None) -> str | None:
    """A line for the user where the data is smaller than the settings assume (None where
    it is not): the validation split is at most a fifth of the training images."""
    n = len(dataset.train_y)
    val = len(dataset.split(val_images)[1])  # the split's own rule: at most a fifth
    notes = []
    if val < val_images:
        notes.append(f"data.val_images={val_images} validation images are asked for, but only "
                     f"a fifth of the images is set aside: {val}; set data.val_images={val} "
                     "(or fewer) to say so, or add images")
    if train_images is not None and train_images > n - val:
        notes.append(f"proxy.train_images={train_images} is more than the {n - val} training "
                     "images: each candidate trains on all of them")
    if proxy_val_images is not None and proxy_val_images > val:
        notes.append(f"proxy.val_images={proxy_val_images} is more than the {val} validation "
                     "images: each candidate is scored on all of them")
    if not notes:
        return None
    return (f"note: {dataset.name} has {n} training images; " + "; ".join(notes)
            + (". So few images rank architectures noisily." if n < 1000 else "."))


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    if cfg.kind == "fashion_mnist":
        return load_fashion_mnist(cfg.root)
    if cfg.kind == "imagefolder":
        return load_image_folder(cfg.root, cfg.in_chans, cfg.size, seed)
    return make_synthetic(cfg.synthetic_images, cfg.in_chans, cfg.size or 28, cfg.num_classes,
                          seed)


def load_for(cfg: Config) -> Dataset:
    """The dataset of a run, with ``cfg.space`` applied to its image size
    (:func:`search.config.fit_space`, which refuses a space that does not take the images)."""
    from search.config import fit_space

    dataset = load_dataset(cfg.data, cfg.seed)
    fit_space(cfg, dataset.size)
    return dataset
