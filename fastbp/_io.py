"""Saving and loading networks as ``.npz`` archives: no pickle, atomic writes, validated reads.

The archive holds plain arrays: ``format_version``, ``fastbp_version``, ``layer_sizes`` (int64),
``activations`` (unicode), ``loss``, ``dtype``, ``params`` (the flat parameter buffer, little-endian) and
``checksum`` (SHA-256 over all of them, so that a corrupted or edited file is refused instead of silently
loading changed parameters). ``load`` reads every array header first and checks dtype and size before any
data is read, so a hostile file cannot make it allocate absurd amounts of memory or unpickle anything.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile

import numpy as np

from fastbp import _layout
from fastbp._version import __version__

FORMAT_VERSION = 1
_MAX_LAYERS = 100_000
_MAX_PARAMS = 2**31 - 1
_MAX_COMPRESSED_MEMBER = 64 * 2**20  # save() writes stored (uncompressed) members; a bigger deflated one
#                                      could be a zip bomb (a few MiB on disk, GiB in memory)
_REQUIRED = ("format_version", "layer_sizes", "activations", "loss", "dtype", "params", "checksum")


def _checksum(layer_sizes, activations, loss, dtype_name, params):
    digest = hashlib.sha256()
    header = f"fastbp/{FORMAT_VERSION}|{list(layer_sizes)}|{list(activations)}|{loss}|{dtype_name}|"
    digest.update(header.encode("utf-8"))
    digest.update(np.ascontiguousarray(params, dtype=params.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _check_path(path, argument="path"):
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"{argument} must be a str or os.PathLike; got {type(path).__name__}") from None


def save(net, path):
    """Write ``net`` to ``path`` (exactly that name; no extension is added).

    Written to a temporary file in the same directory, flushed to disk, then renamed over ``path``: a
    failure part way leaves any previous file at ``path`` intact.
    """
    path = _check_path(path)
    if os.path.exists(path) and not os.path.isfile(path):
        # The rename would replace a device, FIFO or socket node (as root: /dev/null) with a regular file.
        raise ValueError(f"{path}: exists and is not a regular file; not overwriting it")
    params = np.ascontiguousarray(net.params, dtype=net.dtype.newbyteorder("<"))
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "fastbp_version": np.array(__version__),
        "layer_sizes": np.array(net.layer_sizes, dtype=np.int64),
        "activations": np.array(net.activations, dtype=np.str_),
        "loss": np.array(net.loss_name, dtype=np.str_),
        "dtype": np.array(net.dtype.name, dtype=np.str_),
        "params": params,
        "checksum": np.array(_checksum(net.layer_sizes, net.activations, net.loss_name, net.dtype.name,
                                       params), dtype=np.str_),
    }
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


class _Archive:
    """Reads arrays from the zip, checking each header before its data."""

    def __init__(self, zf, path):
        self.zf, self.path = zf, path

    def read(self, name, kinds, max_elements, shape=None):
        try:
            info = self.zf.getinfo(name + ".npy")
        except KeyError:
            raise ValueError(f"{self.path}: not a fastbp model file: the array {name!r} is missing") from None
        # Memory is bounded by the bytes really on disk: a stored member must hold its declared size, and
        # a compressed one may not inflate beyond _MAX_COMPRESSED_MEMBER.
        if info.compress_type == zipfile.ZIP_STORED:
            if info.compress_size != info.file_size or info.compress_size > os.path.getsize(self.path):
                raise ValueError(f"{self.path}: {name!r} is truncated or its size field is corrupted")
        elif info.file_size > _MAX_COMPRESSED_MEMBER:
            raise ValueError(f"{self.path}: {name!r} is a compressed member that inflates to "
                             f"{info.file_size} bytes: refused (fastbp writes uncompressed members)")
        with self.zf.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                found_shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                found_shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        if dtype.hasobject or dtype.kind not in kinds:
            raise ValueError(f"{self.path}: {name!r} has dtype {dtype}, expected one of kind {kinds!r} "
                             "(object arrays are never loaded)")
        count = int(np.prod(found_shape, dtype=object)) if found_shape else 1
        if count > max_elements:
            raise ValueError(f"{self.path}: {name!r} has shape {found_shape}, larger than allowed "
                             f"({max_elements} elements)")
        if shape is not None and tuple(found_shape) != tuple(shape):
            raise ValueError(f"{self.path}: {name!r} has shape {found_shape}, expected {tuple(shape)}")
        if info.file_size < count * dtype.itemsize:
            raise ValueError(f"{self.path}: {name!r} is truncated")
        with self.zf.open(info) as handle:
            array = np.lib.format.read_array(handle, allow_pickle=False)
            handle.read()  # to the end, so that zipfile verifies the member's CRC
        return array


def load(path):
    """Read a file written by :func:`save` as plain data: ``(config, params)``, every parameter bit for bit.

    ``config`` holds ``layer_sizes``, ``activations``, ``loss`` and ``dtype``; ``params`` is the flat
    parameter buffer (native byte order). ``fastbp.Network.load`` builds the network and checks the
    description (activation and loss names).

    Raises
    ------
    ValueError
        When the file is not a valid fastbp model file (corrupted, truncated, edited, wrong version,
        inconsistent shapes, non-finite parameters, object arrays).
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = _check_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such model file: {path!r}")
    if not os.path.isfile(path):  # a device (/dev/zero reads forever), a FIFO (blocks), a directory
        raise ValueError(f"{path}: not a regular file, so not a fastbp model file")
    try:
        with zipfile.ZipFile(path) as zf:
            archive = _Archive(zf, path)
            version = archive.read("format_version", "iu", 1, shape=())
            if int(version) != FORMAT_VERSION:
                raise ValueError(f"{path}: format version {int(version)} is not supported (this fastbp "
                                 f"reads version {FORMAT_VERSION})")
            sizes = archive.read("layer_sizes", "iu", _MAX_LAYERS)
            if sizes.ndim != 1 or sizes.size < 2 or (sizes < 1).any():
                raise ValueError(f"{path}: layer_sizes must be at least two positive integers; got "
                                 f"{sizes.tolist()}")
            sizes = tuple(int(size) for size in sizes)
            _, total = _layout.param_offsets(sizes)
            if total > _MAX_PARAMS:
                raise ValueError(f"{path}: layer_sizes {list(sizes)} imply {total} parameters, more than "
                                 f"allowed ({_MAX_PARAMS})")
            activations = archive.read("activations", "U", _MAX_LAYERS, shape=(len(sizes) - 1,))
            activations = [str(name) for name in activations]
            loss = str(archive.read("loss", "U", 1, shape=()))
            dtype_name = str(archive.read("dtype", "U", 1, shape=()))
            if dtype_name not in ("float32", "float64"):
                raise ValueError(f"{path}: dtype must be float32 or float64; got {dtype_name!r}")
            dtype = np.dtype(dtype_name)
            params = archive.read("params", "f", total, shape=(total,))
            if params.dtype.itemsize != dtype.itemsize:
                raise ValueError(f"{path}: params have dtype {params.dtype}, expected {dtype_name}")
            checksum = str(archive.read("checksum", "U", 1, shape=()))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, KeyError, UnicodeError,
            NotImplementedError, RuntimeError, OverflowError, SyntaxError, TypeError) as error:
        # What a damaged archive raises from zipfile or the .npy header parser.
        raise ValueError(f"{path}: not a valid fastbp model file ({type(error).__name__}: {error})") from None
    if checksum != _checksum(sizes, activations, loss, dtype_name, params):
        raise ValueError(f"{path}: checksum mismatch: the file is corrupted or was modified")
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: params contain NaN or infinity")
    config = {"layer_sizes": list(sizes), "activations": activations, "loss": loss, "dtype": dtype_name}
    return config, params.astype(dtype)  # exact: same dtype (a byte order change is lossless)
