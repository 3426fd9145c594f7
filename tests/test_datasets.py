"""helpers.datasets: verification, mirror, atomic downloads, clear failures, Omniglot cache."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import shutil
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from helpers import datasets
from helpers.datasets import DatasetError


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty data folder for this test only."""
    folder = tmp_path / "data"
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(folder))
    return folder


def _files_below(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_mirror_file_is_verified_and_used_in_place(needs_data, empty_cache):
    path = datasets.fetch("mnist", "t10k-labels-idx1-ubyte.gz")
    assert path.parent == datasets.mirror_dir() / "mnist"
    assert datasets.file_digest(path) in datasets.FILES["mnist/t10k-labels-idx1-ubyte.gz"].sha256
    assert _files_below(empty_cache) == []  # nothing copied


def test_corrupt_mirror_file_gets_one_clear_message(tmp_path, monkeypatch, empty_cache):
    mirror = tmp_path / "mirror" / "omniglot"
    mirror.mkdir(parents=True)
    (mirror / "images_evaluation.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    monkeypatch.setenv(datasets.MIRROR_VARIABLE, str(tmp_path / "mirror"))
    with pytest.raises(DatasetError) as caught:
        datasets.fetch("omniglot", "images_evaluation.zip")
    message = str(caught.value)
    assert (
        "images_evaluation.zip" in message
        and datasets.MIRROR_VARIABLE in message
        and "checksum" in message
    )
    assert _files_below(empty_cache) == []


def test_missing_file_without_network_names_file_address_and_variable(monkeypatch, empty_cache):
    monkeypatch.delenv(datasets.MIRROR_VARIABLE, raising=False)
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    unreachable = replace(
        datasets.FILES[key], urls=("http://127.0.0.1:9/t10k-labels-idx1-ubyte.gz",)
    )
    monkeypatch.setitem(datasets.FILES, key, unreachable)
    with pytest.raises(DatasetError) as caught:
        datasets.fetch("mnist", "t10k-labels-idx1-ubyte.gz")
    message = str(caught.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "http://127.0.0.1:9/" in message
    assert datasets.MIRROR_VARIABLE in message
    assert _files_below(empty_cache) == []  # no partial download left behind


@pytest.fixture
def served_folder(tmp_path):
    """A local HTTP server over a folder: the download path, tested offline."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_download_is_verified_then_cached(needs_data, served_folder, monkeypatch, empty_cache):
    root, url = served_folder
    source = datasets.mirror_dir() / "mnist" / "t10k-labels-idx1-ubyte.gz"
    shutil.copy(source, root / source.name)
    monkeypatch.delenv(datasets.MIRROR_VARIABLE)
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(
        datasets.FILES, key, replace(datasets.FILES[key], urls=(url + source.name,))
    )
    path = datasets.fetch("mnist", source.name)
    assert path == empty_cache / "mnist" / source.name
    assert path.read_bytes() == source.read_bytes()
    assert _files_below(empty_cache) == [path]  # no staging folder or partial file remains
    assert datasets.fetch("mnist", source.name) == path  # second time: straight from the cache


def test_download_with_wrong_bytes_is_rejected_and_removed(served_folder, monkeypatch, empty_cache):
    root, url = served_folder
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    )
    monkeypatch.delenv(datasets.MIRROR_VARIABLE, raising=False)
    key = "mnist/t10k-labels-idx1-ubyte.gz"
    monkeypatch.setitem(
        datasets.FILES, key, replace(datasets.FILES[key], urls=(url + "t10k-labels-idx1-ubyte.gz",))
    )
    with pytest.raises(DatasetError, match="checksum does not match"):
        datasets.fetch("mnist", "t10k-labels-idx1-ubyte.gz")
    assert _files_below(empty_cache) == []


def test_corrupt_cache_entry_is_replaced_from_the_mirror(needs_data, empty_cache):
    cached = empty_cache / "mnist" / "t10k-labels-idx1-ubyte.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"garbage")
    path = datasets.fetch("mnist", "t10k-labels-idx1-ubyte.gz")
    assert not cached.exists() and path.parent == datasets.mirror_dir() / "mnist"


def _repack(source: Path, target: Path, tamper: bool = False) -> None:
    """Re-zip an archive with other settings: different bytes, same pixels (unless tampered)."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        members = [m for m in old.infolist() if not m.is_dir()]
        for i, info in enumerate(reversed(members)):
            payload = old.read(info)
            if tamper and i == 0:
                from io import BytesIO

                from PIL import Image

                image = Image.open(BytesIO(payload)).convert("1")
                image.putpixel((50, 50), 1 - image.getpixel((50, 50)) // 255)
                out = BytesIO()
                image.save(out, format="PNG")
                payload = out.getvalue()
            new.writestr(zipfile.ZipInfo(info.filename, date_time=(2001, 2, 3, 4, 5, 6)), payload)


def test_repacked_omniglot_verifies_by_content_and_tampering_fails(needs_data, tmp_path):
    source = datasets.mirror_dir() / "omniglot" / "images_evaluation.zip"
    remote = datasets.FILES["omniglot/images_evaluation.zip"]
    good, bad = tmp_path / "good" / source.name, tmp_path / "bad" / source.name
    good.parent.mkdir()
    bad.parent.mkdir()
    _repack(source, good)
    _repack(source, bad, tamper=True)
    assert datasets.file_digest(good) != datasets.file_digest(source)
    assert datasets.verify(good, remote)
    assert not datasets.verify(bad, remote)


def test_idx_reader_rejects_truncated_files(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02"))
    with pytest.raises(DatasetError, match="truncated"):
        datasets.read_idx(path)


def test_mnist_and_fashion_shapes_and_counts(needs_data):
    mnist = datasets.load_mnist()
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (
        10000,
        28,
        28,
    )
    assert np.bincount(mnist.train_labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    fashion = datasets.load_fashion_mnist()
    assert np.bincount(fashion.test_labels).tolist() == [1000] * 10
    assert fashion.class_names[9] == "Ankle boot"


def test_omniglot_arrays_and_second_load_uses_the_cache(needs_data, monkeypatch):
    data = datasets.load_omniglot()
    assert data.images.shape == (1623, 20, 28, 28) and data.images.dtype == np.uint8
    assert int(data.background.sum()) == 964 and len(set(data.alphabets)) == 50
    # strokes are bright on a dark page: most pixels are dark
    assert np.median(data.images) == 0 and data.images.max() == 255

    def must_not_decode(*args, **kwargs):
        raise AssertionError("the second load decoded PNGs instead of reading the cache")

    monkeypatch.setattr(datasets, "_to_small", must_not_decode)
    again = datasets.load_omniglot()
    assert np.array_equal(again.images, data.images) and again.characters == data.characters


def test_lake_runs_are_twenty_20_way_permutations(needs_data):
    runs = datasets.load_lake_runs()
    assert len(runs) == 20
    for run in runs:
        assert run.train_images.shape == (20, 28, 28) and run.test_images.shape == (20, 28, 28)
        assert sorted(run.answers.tolist()) == list(range(20))


def test_vinyals_split_sizes(needs_data):
    assert len(datasets.load_vinyals_split("trainval")) == 4800
    assert len(datasets.load_vinyals_split("test")) == 1692
    with pytest.raises(ValueError, match="split must be one of"):
        datasets.load_vinyals_split("everything")


def test_no_dataset_file_is_tracked_by_git():
    import subprocess

    root = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=root, capture_output=True, text=True
    ).stdout.split()
    names = {f.filename for f in datasets.FILES.values()}
    assert not [t for t in tracked if os.path.basename(t) in names]


# ----------------------------------------------------------------------------- damaged files heal


def _tiny_omniglot_zip(path: Path) -> bytes:
    """A few PNG drawings laid out like an Omniglot archive, deflated like the real one."""
    from io import BytesIO

    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for c in range(2):
            for d in range(3):
                image = Image.fromarray(
                    (rng.random((12, 12)) > 0.5).astype(np.uint8) * 255
                ).convert("1")
                png = BytesIO()
                image.save(png, format="PNG")
                archive.writestr(
                    f"images_evaluation/Alpha/character0{c + 1}/0{c + 1}0{d}_0{d + 1}.png",
                    png.getvalue(),
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


@pytest.fixture
def tiny_omniglot(tmp_path, monkeypatch):
    """``omniglot/images_evaluation.zip`` replaced by a tiny archive checked by its content hash."""
    good = tmp_path / "good" / "images_evaluation.zip"
    payload = _tiny_omniglot_zip(good)
    key = "omniglot/images_evaluation.zip"
    remote = replace(
        datasets.FILES[key],
        urls=("http://127.0.0.1:9/images_evaluation.zip",),
        sha256=(),
        md5=(),
        content_sha256=datasets.omniglot_content_hash(good),
    )
    monkeypatch.setitem(datasets.FILES, key, remote)
    return remote, payload


def _zlib_breaking_corruption(payload: bytes, tmp_path: Path) -> bytes:
    """The first single-byte corruption of ``payload`` that makes decoding raise ``zlib.error``."""
    import zlib

    probe = tmp_path / "probe.zip"
    for i in range(len(payload)):
        damaged = bytearray(payload)
        damaged[i] ^= 0x55
        probe.write_bytes(bytes(damaged))
        try:
            datasets.omniglot_content_hash(probe)
        except zlib.error:
            return bytes(damaged)
        except Exception:
            continue
    raise AssertionError("no single-byte corruption broke the deflate stream")


def test_every_single_byte_corruption_of_a_zip_is_a_failed_check_not_an_exception(
    tmp_path, tiny_omniglot
):
    import zlib

    remote, payload = tiny_omniglot
    path = tmp_path / "bad" / "images_evaluation.zip"
    path.parent.mkdir()
    outcomes = {True: 0, False: 0}
    for i in range(len(payload)):  # about 1,600 corruptions of about 1,600 bytes
        damaged = bytearray(payload)
        damaged[i] ^= 0x55
        path.write_bytes(bytes(damaged))
        (path.parent / ".content-verified.json").unlink(missing_ok=True)
        outcomes[datasets.verify(path, remote)] += 1  # must never raise (zlib.error used to escape)
    assert outcomes[False] > len(payload) / 2
    # the corruptions that pass change no pixel (time stamps, spare header bytes): the content hash holds;
    # and among those that fail are the ones whose deflate stream breaks with zlib.error underneath
    with pytest.raises(zlib.error):
        datasets.omniglot_content_hash(
            _write(tmp_path / "z.zip", _zlib_breaking_corruption(payload, tmp_path))
        )
    assert not datasets.verify(tmp_path / "z.zip", remote)


def _write(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


def test_a_damaged_cached_zip_is_removed_and_fetched_again_from_the_mirror(
    tmp_path, tiny_omniglot, monkeypatch, empty_cache
):
    remote, payload = tiny_omniglot
    mirror = tmp_path / "mirror"
    _tiny_omniglot_zip(mirror / "omniglot" / "images_evaluation.zip")
    monkeypatch.setenv(datasets.MIRROR_VARIABLE, str(mirror))
    cached = empty_cache / "omniglot" / "images_evaluation.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_zlib_breaking_corruption(payload, tmp_path))
    assert not datasets.verify(cached, remote)
    path = datasets.fetch("omniglot", "images_evaluation.zip")
    assert path == mirror / "omniglot" / "images_evaluation.zip" and not cached.exists()


def test_a_damaged_cached_zip_is_downloaded_again(
    served_folder, tiny_omniglot, monkeypatch, empty_cache
):
    root, url = served_folder
    remote, payload = tiny_omniglot
    (root / "images_evaluation.zip").write_bytes(payload)
    monkeypatch.delenv(datasets.MIRROR_VARIABLE, raising=False)
    monkeypatch.setitem(
        datasets.FILES,
        "omniglot/images_evaluation.zip",
        replace(remote, urls=(url + "images_evaluation.zip",)),
    )
    cached = empty_cache / "omniglot" / "images_evaluation.zip"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(payload[:-40])  # truncated: its central directory is gone
    assert datasets.fetch("omniglot", "images_evaluation.zip") == cached
    assert cached.read_bytes() == payload
    assert datasets.fetch("omniglot", "images_evaluation.zip") == cached  # and now it stays


def test_a_read_only_data_folder_is_named_before_any_decoding(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir()
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(folder))
    monkeypatch.setattr(
        datasets, "writable", lambda path: False
    )  # as a read-only mount (root may write anywhere)

    def must_not_decode(*args, **kwargs):
        raise AssertionError("decoding started although its result could not be kept")

    monkeypatch.setattr(datasets, "_character_members", must_not_decode)
    monkeypatch.setattr(datasets, "fetch", lambda dataset, name: tmp_path / name)
    monkeypatch.setattr(datasets, "file_digest", lambda path, algorithm="sha256": "0" * 64)
    with pytest.raises(DatasetError) as caught:
        datasets.load_omniglot()
    message = str(caught.value)
    assert (
        datasets.DATA_DIR_VARIABLE in message
        and str(folder / "omniglot") in message
        and "\n" not in message
    )


def test_a_read_only_data_folder_is_named_before_a_download(monkeypatch, tmp_path):
    monkeypatch.delenv(datasets.MIRROR_VARIABLE, raising=False)
    monkeypatch.setenv(datasets.DATA_DIR_VARIABLE, str(tmp_path / "read-only"))
    monkeypatch.setattr(datasets, "writable", lambda path: False)
    monkeypatch.setattr(
        datasets, "_download", lambda *a: pytest.fail("downloaded into a folder it cannot write")
    )
    with pytest.raises(
        DatasetError, match=f"not writable; set {datasets.DATA_DIR_VARIABLE} to a writable folder"
    ):
        datasets.fetch("mnist", "t10k-labels-idx1-ubyte.gz")


def test_writable_is_false_for_a_folder_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        expected = os.access(
            locked, os.W_OK
        )  # True only for a user (root) whom permissions do not stop
        assert datasets.writable(locked) is expected
        assert datasets.writable(tmp_path / "new" / "folder")
    finally:
        locked.chmod(0o700)
