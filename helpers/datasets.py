"""Fetch, verify, cache and load the course's datasets: Omniglot, MNIST and Fashion-MNIST.

Every file is looked up in this order:

1. the cache, ``data/<dataset>/<file>`` beside the ``helpers`` package (or the folder named by
   ``METALEARN_DATA_DIR``);
2. a local mirror folder named by the environment variable ``METALEARN_DATA_MIRROR``, laid
   out as ``<mirror>/<dataset>/<official file name>`` (used in place, never copied);
3. the file's official address, downloaded with a progress bar into the cache.

Whatever the source, a file is used only after its checksum matches. A download is written
to a staging file and moved into place only once verified, so a failure leaves nothing
half written. Omniglot is decoded once into 28x28 arrays cached on disk, so every later load
is a single ``np.load``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MIRROR_VARIABLE = "METALEARN_DATA_MIRROR"
DATA_DIR_VARIABLE = "METALEARN_DATA_DIR"


class DatasetError(RuntimeError):
    """A dataset file is missing, cannot be fetched, or fails its checksum."""


@dataclass(frozen=True)
class RemoteFile:
    """One official dataset file and every checksum under which we accept it.

    ``sha256`` and ``md5`` list accepted hashes of the file's bytes. ``content_sha256`` is a
    hash of the decoded content (used for Omniglot, whose re-packed archives differ in bytes
    from the official ones but hold the same pixels).
    """

    dataset: str
    name: str
    urls: tuple[str, ...]
    sha256: tuple[str, ...] = ()
    md5: tuple[str, ...] = ()
    content_sha256: str | None = None

    @property
    def filename(self) -> str:
        return Path(self.name).name


_OMNIGLOT = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_SPLITS = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/"
    "c9bb4d258267c11cb6e23f0a19242d24ca98ad8a/data/omniglot/splits/vinyals/"
)
# yann.lecun.com is MNIST's home; PyTorch's copy of the same bytes answers when it does not.
_MNIST = ("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_FASHION = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)

FILES: dict[str, RemoteFile] = {
    f.dataset + "/" + f.name: f
    for f in [
        RemoteFile(
            "omniglot",
            "images_background.zip",
            (_OMNIGLOT + "images_background.zip",),
            sha256=("236b154d0e6334f364479a5329afea6dab9ff215c148a78d72363ce8c76d5426",),
            md5=("68d2efa1b9178cc56df9314c21c6e718",),
            content_sha256="85f13aa6b573c12253f2740fbaad91ccdf710c148fc820ed70263a858a9a46de",
        ),
        RemoteFile(
            "omniglot",
            "images_evaluation.zip",
            (_OMNIGLOT + "images_evaluation.zip",),
            sha256=("8620260a0350fc57296716a3f1e394d2b4024b02f9ba3e1b8bb03e65e7594c6d",),
            md5=("6b91aef0f799c5bb55b94e3f2daec811",),
            content_sha256="838ee9f95600d1e801f0a489862ef1a89eb0b5ea293d2fef2e0245c5d5305074",
        ),
        RemoteFile(
            "omniglot",
            "all_runs.zip",
            (_OMNIGLOT + "one-shot-classification/all_runs.zip",),
            sha256=("437c1eeab0af8484112e1b4cc0f3d541ec727f7c47b9b202da738af9dfd6c325",),
        ),
        *[
            RemoteFile(
                "omniglot",
                f"splits/vinyals/{split}.txt",
                (_SPLITS + f"{split}.txt",),
                sha256=(digest,),
            )
            for split, digest in {
                "train": "984522c194c30fb678ce53304a160a42faf5403ad4f9a67010f32dd3a35738e0",
                "val": "11f99e54faee3e26f53d3231c1cceac5bf7b8730e9be31cb6dab256551dc0c1a",
                "trainval": "5276ae50c755596d0bff7f2284e85625695549a85ee6e36b6491ad1e5d1cc26a",
                "test": "845264cc5c156180828ccf17915668b17ee21424d0170df6e7d81676aa5d1204",
            }.items()
        ],
        *[
            RemoteFile("mnist", name, tuple(base + name for base in _MNIST), sha256=(digest,))
            for name, digest in {
                "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            }.items()
        ],
        *[
            RemoteFile(
                "fashion-mnist", name, tuple(base + name for base in _FASHION), sha256=(digest,)
            )
            for name, digest in {
                "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            }.items()
        ],
    ]
}

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


# --------------------------------------------------------------------------------------------
# where files live


def data_dir() -> Path:
    """The cache folder: ``METALEARN_DATA_DIR`` if set, else ``data/`` beside ``helpers/``."""
    override = os.environ.get(DATA_DIR_VARIABLE)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "data"


def mirror_dir() -> Path | None:
    """The local mirror folder named by ``METALEARN_DATA_MIRROR``, or ``None`` when unset."""
    value = os.environ.get(MIRROR_VARIABLE)
    return Path(value).expanduser() if value else None


def _lookup(dataset: str, name: str) -> RemoteFile:
    key = f"{dataset}/{name}"
    if key not in FILES:
        known = ", ".join(sorted(FILES))
        raise KeyError(f"unknown dataset file {key!r}; known files: {known}")
    return FILES[key]


# --------------------------------------------------------------------------------------------
# checksums


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _png_members(archive: zipfile.ZipFile) -> list[str]:
    return sorted(
        n
        for n in archive.namelist()
        if n.endswith(".png") and not n.startswith("__MACOSX") and "/._" not in n
    )


def omniglot_content_hash(path: Path) -> str:
    """SHA-256 of an Omniglot archive's decoded pixels, independent of how it was zipped.

    Each PNG contributes its path below the top folder and its 1-bit pixels, in sorted order,
    so the official archive and a faithful re-pack of the same drawings hash alike.
    """
    from PIL import Image

    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as archive:
        for member in _png_members(archive):
            relative = member.split("/", 1)[1]
            pixels = np.asarray(
                Image.open(io.BytesIO(archive.read(member))).convert("1"), dtype=np.uint8
            )
            digest.update(relative.encode())
            digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def _verified_record(folder: Path) -> Path:
    return folder / ".content-verified.json"


def verify(path: Path, remote: RemoteFile) -> bool:
    """True when ``path`` holds ``remote``'s data: a known byte hash, or the known content hash.

    Never raises for a damaged file: whatever goes wrong while decoding it (``zlib.error``
    and every other decompression error included) counts as a failed check.
    """
    sha = file_digest(path, "sha256")
    if sha in remote.sha256 or (remote.md5 and file_digest(path, "md5") in remote.md5):
        return True
    if remote.content_sha256 is None:
        return False
    # A re-packed archive: check the pixels once, then remember its byte hash beside it.
    record = _verified_record(path.parent)
    seen = json.loads(record.read_text()) if record.exists() else {}
    if seen.get(path.name) == sha:
        return True
    try:
        ok = omniglot_content_hash(path) == remote.content_sha256
    except Exception:  # an archive that fails to decode in any way is not the data
        # (a damaged zip raises BadZipFile, zlib.error, EOFError, NotImplementedError, OSError, ...)
        return False
    if ok and os.access(path.parent, os.W_OK):
        seen[path.name] = sha
        with contextlib.suppress(OSError):
            _atomic_write_bytes(record, json.dumps(seen, indent=1).encode())
    return ok


# --------------------------------------------------------------------------------------------
# fetching


def writable(folder: Path) -> bool:
    """True when files can be created in ``folder`` (made first, with its parents, if missing)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def require_writable(folder: Path, what: str) -> None:
    """Raise :class:`DatasetError` (one sentence naming ``METALEARN_DATA_DIR``) unless ``folder`` is writable."""
    if not writable(folder):
        raise DatasetError(
            f"Cannot {what}: the data folder {folder} is not writable; set {DATA_DIR_VARIABLE} to a writable folder "
            f"(or make {folder} writable)."
        )


def _atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _download(remote: RemoteFile, destination: Path) -> None:
    """Download ``remote`` to ``destination``, verified; on any failure nothing is left there."""
    import pooch

    destination.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in remote.urls:
        staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=".download-"))
        try:
            fetched = Path(
                pooch.retrieve(
                    url, known_hash=None, fname=remote.filename, path=staging, progressbar=True
                )
            )
            if not verify(fetched, remote):
                failures.append(f"{url} gave a file whose checksum does not match")
                continue
            os.replace(fetched, destination)
            return
        except Exception as exc:  # network errors come in many types (requests, urllib, OS)
            failures.append(f"{url} failed ({type(exc).__name__}: {str(exc)[:120]})")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    mirror = mirror_dir()
    where = (
        f"not in the mirror folder {mirror}"
        if mirror
        else f"no mirror folder is set in {MIRROR_VARIABLE}"
    )
    raise DatasetError(
        f"Cannot get {remote.dataset}/{remote.name}: it is not cached at {destination}, {where}, "
        f"and the download did not work ({'; '.join(failures)}); connect to the network, or put the "
        f"official file at {destination}, or set {MIRROR_VARIABLE} to a folder holding "
        f"{remote.dataset}/{remote.name}."
    )


def fetch(dataset: str, name: str) -> Path:
    """Return a verified local path to the official file ``name`` of ``dataset``.

    >>> fetch("mnist", "t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    PosixPath('.../data/mnist/t10k-labels-idx1-ubyte.gz')
    """
    remote = _lookup(dataset, name)
    cached = data_dir() / dataset / name
    if cached.exists():
        if verify(cached, remote):
            return cached
        try:
            cached.unlink()  # a corrupt or outdated cache entry is fetched again below
        except OSError as exc:
            raise DatasetError(
                f"The cached {cached} is damaged and cannot be removed ({exc.strerror or exc}); delete it, or set "
                f"{DATA_DIR_VARIABLE} to a writable folder."
            ) from exc
    mirror = mirror_dir()
    if mirror is not None:
        for candidate in (mirror / dataset / name, mirror / name, mirror / remote.filename):
            if candidate.is_file():
                if verify(candidate, remote):
                    return candidate
                raise DatasetError(
                    f"The mirror file {candidate} does not match the checksum of {dataset}/{name}; "
                    f"replace it with the official file, or unset {MIRROR_VARIABLE} to download it."
                )
    require_writable(cached.parent, f"download {dataset}/{name}")
    _download(remote, cached)
    return cached


# --------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST


@dataclass
class ImageDataset:
    """Train and test images (uint8, ``(n, 28, 28)``) with integer labels and class names."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...] = field(default_factory=tuple)


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            payload = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path} is not a readable idx file ({exc}); delete it so it is fetched again."
        ) from exc
    zero, dtype_code, ndim = payload[0:2], payload[2], payload[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise DatasetError(
            f"{path} does not start with an idx header for unsigned bytes; delete it so it is fetched again."
        )
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(payload, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DatasetError(
            f"{path} holds {data.size} bytes of data where its header promises {shape}; it is truncated."
        )
    return data.reshape(shape)


def load_mnist(variant: str = "mnist") -> ImageDataset:
    """Load MNIST (``"mnist"``) or Fashion-MNIST (``"fashion-mnist"``) from the idx files."""
    if variant not in ("mnist", "fashion-mnist"):
        raise ValueError(f"variant must be 'mnist' or 'fashion-mnist', got {variant!r}.")
    arrays = {
        part: read_idx(fetch(variant, f"{part}-idx{3 if 'images' in part else 1}-ubyte.gz"))
        for part in ("train-images", "train-labels", "t10k-images", "t10k-labels")
    }
    names = FASHION_CLASSES if variant == "fashion-mnist" else tuple(str(d) for d in range(10))
    return ImageDataset(
        variant,
        arrays["train-images"],
        arrays["train-labels"].astype(np.int64),
        arrays["t10k-images"],
        arrays["t10k-labels"].astype(np.int64),
        names,
    )


def load_fashion_mnist() -> ImageDataset:
    """Fashion-MNIST: 10 kinds of garment and footwear, 28x28 grey images."""
    return load_mnist("fashion-mnist")


# --------------------------------------------------------------------------------------------
# Omniglot


@dataclass
class Omniglot:
    """All 1,623 Omniglot characters, drawn 20 times each, as small grey images.

    ``images`` is ``(1623, 20, size, size)`` uint8 with the strokes bright (255) on a dark
    background; drawing ``j`` of every character is by drawer ``j + 1``. ``characters`` names
    each one ``Alphabet/characterNN`` and ``background`` marks the 964 characters of the
    30 background alphabets (the other 659 form the 20 evaluation alphabets).
    """

    images: np.ndarray
    characters: tuple[str, ...]
    background: np.ndarray

    @property
    def alphabets(self) -> tuple[str, ...]:
        return tuple(c.split("/")[0] for c in self.characters)

    def index(self) -> dict[str, int]:
        """Map ``Alphabet/characterNN`` to its row in :attr:`images`."""
        return {name: i for i, name in enumerate(self.characters)}


CACHE_VERSION = 1


def _to_small(png: bytes, size: int) -> np.ndarray:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("L")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(image, dtype=np.uint8)  # strokes bright, paper dark


def _character_members(path: Path) -> dict[str, list[str]]:
    """``Alphabet/characterNN`` -> its 20 PNG members, ordered by drawer."""
    with zipfile.ZipFile(path) as archive:
        groups: dict[str, list[str]] = {}
        for member in _png_members(archive):
            _, alphabet, character, _ = member.split("/")
            groups.setdefault(f"{alphabet}/{character}", []).append(member)
    for name, members in groups.items():
        if len(members) != 20:
            raise DatasetError(
                f"{path}: character {name} has {len(members)} drawings instead of 20; the archive is damaged."
            )
        members.sort(key=lambda m: m.rsplit("_", 1)[-1])
    return dict(sorted(groups.items()))


def load_omniglot(image_size: int = 28, *, progress: bool = True) -> Omniglot:
    """Load both Omniglot sets as arrays, decoding the archives only the first time.

    The first call decodes 32,460 PNGs (about 20 s on 2 cores) and caches the result as
    ``data/omniglot/omniglot_<size>px.npz``; later calls read that file in well under 2 s.
    """
    if not 8 <= image_size <= 105:
        raise ValueError(
            f"image_size must be between 8 and 105 pixels (the originals are 105), got {image_size}."
        )
    sources = [fetch("omniglot", f"images_{part}.zip") for part in ("background", "evaluation")]
    stamp = f"v{CACHE_VERSION}:" + ":".join(file_digest(p) for p in sources)
    cache = data_dir() / "omniglot" / f"omniglot_{image_size}px.npz"
    if cache.exists():
        with contextlib.suppress(Exception), np.load(cache, allow_pickle=False) as stored:
            if str(stored["stamp"]) == stamp:
                return Omniglot(
                    stored["images"], tuple(stored["characters"].tolist()), stored["background"]
                )
    # Decoding takes a while; find out first whether its result can be kept.
    require_writable(cache.parent, f"cache the decoded {image_size}px Omniglot arrays")
    from tqdm.auto import tqdm

    names, arrays, flags = [], [], []
    for part, path in zip(("background", "evaluation"), sources):
        groups = _character_members(path)
        with zipfile.ZipFile(path) as archive:
            for name, members in tqdm(
                groups.items(), desc=f"Omniglot {part} -> {image_size}px", disable=not progress
            ):
                names.append(name)
                arrays.append(np.stack([_to_small(archive.read(m), image_size) for m in members]))
                flags.append(part == "background")
    data = Omniglot(np.stack(arrays), tuple(names), np.array(flags))
    buffer = io.BytesIO()
    np.savez(
        buffer,
        images=data.images,
        characters=np.array(names),
        background=data.background,
        stamp=np.array(stamp),
    )
    _atomic_write_bytes(cache, buffer.getvalue())
    return data


def load_vinyals_split(split: str) -> list[str]:
    """Class names of one Vinyals split: ``'train'``, ``'val'``, ``'trainval'`` or ``'test'``.

    Each name reads ``Alphabet/characterNN/rotDDD``: rotated characters count as new classes.
    """
    if split not in ("train", "val", "trainval", "test"):
        raise ValueError(f"split must be one of 'train', 'val', 'trainval', 'test', got {split!r}.")
    return fetch("omniglot", f"splits/vinyals/{split}.txt").read_text().split()


@dataclass
class LakeRun:
    """One of Lake et al.'s 20 within-alphabet 20-way one-shot runs.

    ``train_images``: ``(20, size, size)``, one drawing of each of 20 characters;
    ``test_images``: ``(20, size, size)``; ``answers[i]`` is the index in ``train_images`` of
    the character that test image ``i`` shows.
    """

    name: str
    train_images: np.ndarray
    test_images: np.ndarray
    answers: np.ndarray


def load_lake_runs(image_size: int = 28) -> list[LakeRun]:
    """The 20 runs of ``all_runs.zip``, images resized like :func:`load_omniglot`'s."""
    path = fetch("omniglot", "all_runs.zip")
    runs = []
    with zipfile.ZipFile(path) as archive:
        for r in range(1, 21):
            run = f"run{r:02d}"
            pairs = [
                line.split()
                for line in archive.read(f"{run}/class_labels.txt").decode().splitlines()
                if line.strip()
            ]
            train_names = sorted(
                n
                for n in archive.namelist()
                if n.startswith(f"{run}/training/") and n.endswith(".png")
            )
            position = {n: i for i, n in enumerate(train_names)}
            tests = [test for test, _ in pairs]
            runs.append(
                LakeRun(
                    run,
                    np.stack([_to_small(archive.read(n), image_size) for n in train_names]),
                    np.stack([_to_small(archive.read(n), image_size) for n in tests]),
                    np.array([position[answer] for _, answer in pairs]),
                )
            )
    return runs
