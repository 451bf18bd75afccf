"""Saving and loading networks as ``.npz`` archives: no pickle, atomic writes, validated reads.

The archive holds plain arrays: ``format_version``, ``fastbp_version``, ``layer_sizes`` (int64),
``activations`` (unicode), ``loss``, ``dtype``, ``params`` (the flat parameter buffer, little-endian) and
``checksum`` (SHA-256 over all of them, so that a corrupted or edited file is refused instead of silently
loading changed parameters). Saved with an optimizer (``net.save(path, optimizer=opt)``), it also holds
``optimizer_class`` (``"SGD"``, ``"Adam"``...), ``optimizer_rule``, ``optimizer_hyper`` (float64),
``optimizer_state`` (the parameters' dtype, one row per state row), ``optimizer_steps`` (int64) and
``optimizer_checksum`` (SHA-256 over the model's checksum and those members: the optimizer cannot be moved
onto other parameters unnoticed). A reader that does not know these members still loads the network.
Members are stored uncompressed. ``load`` opens the file without blocking,
checks that the opened descriptor is a regular file, refuses compressed members (fastbp never writes them:
a compressed member is how a few KiB on disk become GiB in memory), reads every array header first and
checks dtype and size against the file's real size before any data is read, and then reads at most the
declared bytes: a hostile file cannot make it allocate absurd amounts of memory, block, or unpickle
anything.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
import time
import zipfile

import numpy as np

from fastbp import _spec
from fastbp._version import __version__

FORMAT_VERSION = 1
_MAX_LAYERS = 100_000
_MAX_PARAMS = 2**31 - 1
_MAX_COMPRESSED_MEMBER = 64 * 2**20  # a public-looking name callers may read; load refuses compressed members
_MAX_HEADER = 10_000  # bytes of a .npy header (NumPy's own default limit)
_REQUIRED = ("format_version", "layer_sizes", "activations", "loss", "dtype", "params", "checksum")
_OPTIMIZER_MEMBERS = ("optimizer_class", "optimizer_rule", "optimizer_hyper", "optimizer_state",
                      "optimizer_steps", "optimizer_checksum")
_MAX_NAME = 64  # characters of an optimizer class or rule name


def _checksum(layer_sizes, activations, loss, dtype_name, params):
    digest = hashlib.sha256()
    header = f"fastbp/{FORMAT_VERSION}|{list(layer_sizes)}|{list(activations)}|{loss}|{dtype_name}|"
    digest.update(header.encode("utf-8"))
    digest.update(np.ascontiguousarray(params, dtype=params.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _optimizer_checksum(model_checksum, class_name, rule, hyper, state, steps):
    digest = hashlib.sha256()
    digest.update(f"fastbp-optimizer/{FORMAT_VERSION}|{model_checksum}|{class_name}|{rule}|".encode("utf-8"))
    digest.update(np.ascontiguousarray(hyper, dtype="<f8").tobytes())
    digest.update(f"|{state.shape}|{state.dtype.name}|".encode("utf-8"))
    digest.update(np.ascontiguousarray(state, dtype=state.dtype.newbyteorder("<")).tobytes())
    digest.update(np.asarray(steps, dtype="<i8").tobytes())
    return digest.hexdigest()


def _check_path(path, argument="path"):
    """``path`` as a ``str`` or ``bytes`` file name (``os.fspath``); TypeError for anything else."""
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(f"{argument} must be a str, bytes or os.PathLike; got {type(path).__name__}") from None


def _shown(path):
    """The path as text for messages (a bytes path is decoded as the file system does)."""
    return os.fsdecode(path)


def _snapshot(net, optimizer=None):
    """One consistent copy of ``net.params``: a state the network really had.

    With ``optimizer``, returns ``(params, state_dict)``: the optimizer's state copied in the same window
    as the parameters (the kernel updates both under the network's busy lock), so that the pair is one
    state training really had.

    The kernel updates the buffer in place while ``fit`` (or ``train_step``, ``step``, ``set_params``)
    holds the network's busy lock. Taking that lock here would make a ``fit`` started meanwhile in another
    thread fail ("being trained"), so instead the copy is checked afterwards: the network counts every
    entry into and exit from the lock (``_writes``: odd while a writer holds it), and a copy is kept only if
    no writer held the lock before, during or after it. While another thread's writer runs, this waits for
    it to return (``train_step`` takes microseconds; a ``fit`` takes as long as it takes: to checkpoint
    during a long ``fit``, save from a callback). Called from a callback of ``fit`` in the thread that runs
    it, the kernel is between epochs, so the buffer is consistent as it is.
    """
    params = net.params

    def copy():
        if optimizer is None:
            return params.copy()
        return params.copy(), optimizer.state_dict()

    if getattr(net, "_busy_owner", None) == threading.get_ident():
        return copy()
    delay = 1e-4
    while True:
        before = getattr(net, "_writes", 0)
        if before % 2 == 0 and not net._busy.locked():
            taken = copy()
            if getattr(net, "_writes", 0) == before:
                return taken
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


def _file_mode(path):
    """The mode for the new file: an existing file's mode is kept; a new one gets 0o666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # reading the umask without setting it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None  # os.open's mode argument, filtered by the umask, then decides


def save(net, path, optimizer=None, optimizer_class=None):
    """Write ``net`` to ``path`` (exactly that name; no extension is added), with ``optimizer``'s state
    (hyper-parameters, state rows, step count) when one is given; ``optimizer_class`` names its public
    class (``Network.save`` checks the optimizer and names it).

    The parameters are copied once (a state the network really had, even while another thread trains
    it: see ``docs/ROBUSTNESS.md``), checked, hashed and written from that copy. The file is written to a
    temporary file in the same directory, flushed to disk, then renamed over ``path``: a failure part way
    leaves any previous file at ``path`` intact. A new file gets the mode the umask gives (``0o666 &
    ~umask``); replacing an existing file keeps its mode.

    Raises
    ------
    ValueError
        When ``path`` names something other than a regular file, or when the network holds what
        :func:`load` would refuse (NaN or infinite parameters, written through ``weights``/``params``
        views; more than 100,000 layers; more than 2**31 - 1 parameters; a non-finite optimizer state),
        Nothing is written then.
    """
    path = _check_path(path)
    class_name = optimizer_class
    shown = _shown(path)
    if os.path.exists(path) and not os.path.isfile(path):
        # The rename would replace a device, FIFO or socket node (as root: /dev/null) with a regular file.
        raise ValueError(f"{shown}: exists and is not a regular file; not overwriting it")
    sizes = tuple(int(size) for size in net.layer_sizes)
    if len(sizes) > _MAX_LAYERS:
        raise ValueError(f"save: the network has {len(sizes)} layer sizes, more than a model file may hold "
                         f"({_MAX_LAYERS}); load would refuse the file, so nothing was written")
    if net.params.size > _MAX_PARAMS:
        raise ValueError(f"save: the network has {net.params.size} parameters, more than a model file may "
                         f"hold ({_MAX_PARAMS}); nothing was written")
    if optimizer is None:
        params, optimizer_state = _snapshot(net), None
    else:
        params, optimizer_state = _snapshot(net, optimizer)
    params = np.ascontiguousarray(params, dtype=net.dtype.newbyteorder("<"))
    if not np.isfinite(params).all():
        bad = int(np.flatnonzero(~np.isfinite(params))[0])
        raise ValueError(f"save: the parameters hold NaN or infinity (params[{bad}] = {params[bad]}), "
                         "written through net.params, net.weights or net.biases; load would refuse the "
                         "file, so nothing was written")
    arrays = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "fastbp_version": np.array(__version__),
        "layer_sizes": np.array(sizes, dtype=np.int64),
        "activations": np.array(net.activations, dtype=np.str_),
        "loss": np.array(net.loss_name, dtype=np.str_),
        "dtype": np.array(net.dtype.name, dtype=np.str_),
        "params": params,
        "checksum": np.array(_checksum(sizes, net.activations, net.loss_name, net.dtype.name, params),
                             dtype=np.str_),
    }
    if optimizer_state is not None:
        state = np.ascontiguousarray(optimizer_state["state"], dtype=net.dtype.newbyteorder("<"))
        hyper = np.ascontiguousarray(optimizer_state["hyper"], dtype="<f8")
        if not (np.isfinite(state).all() and np.isfinite(hyper).all()):
            raise ValueError("save: the optimizer's state holds NaN or infinity; load would refuse the file, "
                             "so nothing was written")
        steps = np.array(optimizer_state["steps"], dtype="<i8")
        arrays.update({
            "optimizer_class": np.array(class_name, dtype=np.str_),
            "optimizer_rule": np.array(optimizer_state["rule"], dtype=np.str_),
            "optimizer_hyper": hyper,
            "optimizer_state": state,
            "optimizer_steps": steps,
            "optimizer_checksum": np.array(
                _optimizer_checksum(str(arrays["checksum"]), class_name, optimizer_state["rule"], hyper,
                                    state, steps), dtype=np.str_),
        })
    directory, base = os.path.split(os.path.abspath(path))
    mode = _file_mode(path)
    dot, suffix = (b".", b".tmp") if isinstance(base, bytes) else (".", ".tmp")
    while True:
        token = secrets.token_hex(6)
        temporary = os.path.join(directory, dot + base + dot + (token.encode() if isinstance(base, bytes)
                                                                else token) + suffix)
        try:
            # O_EXCL: never follow or reuse a name someone else made; 0o666 lets the umask decide the mode.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                                 0o666)
            break
        except FileExistsError:
            continue
    try:
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(descriptor, mode)
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


def _open_regular(path):
    """An open binary file for ``path``, refused unless the opened descriptor is a regular file.

    ``O_NONBLOCK`` keeps the open of a FIFO (one swapped in after any check on the name) from blocking;
    the type is then checked on the descriptor itself, so no race between a check and the open remains.
    Returns ``(file, size)``.
    """
    shown = _shown(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such model file: {shown!r}") from None
    except IsADirectoryError:
        raise ValueError(f"{shown}: is a directory, not a fastbp model file") from None
    except ValueError as error:  # an embedded NUL character
        raise ValueError(f"path {shown!r} is not a valid file name ({error})") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):  # a device (/dev/zero reads forever), a FIFO (blocks), a directory
            raise ValueError(f"{shown}: not a regular file, so not a fastbp model file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb"), info.st_size
    except BaseException:
        os.close(descriptor)
        raise


def _parse_header(handle, where):
    """``(shape, fortran_order, dtype)`` of a .npy header, or a ValueError naming ``where`` and why."""
    try:
        version = np.lib.format.read_magic(handle)
    except Exception as error:  # NumPy raises ValueError for a bad magic string, others for short reads
        raise ValueError(f"{where}: not a .npy array (bad magic string: {error})") from None
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{where}: .npy format version {version[0]}.{version[1]} is not supported "
                         "(fastbp writes 1.0)")
    try:
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(handle, max_header_size=_MAX_HEADER)
        return np.lib.format.read_array_header_2_0(handle, max_header_size=_MAX_HEADER)
    except Exception as error:  # hostile header text: ValueError, SyntaxError, TypeError, MemoryError...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{where}: invalid .npy header ({reason[:200]})") from None


class _Archive:
    """Reads arrays from the zip, checking each member and header before its data."""

    def __init__(self, zf, path, file_size):
        self.zf, self.path, self.file_size = zf, path, file_size

    def read(self, name, kinds, max_elements, shape=None):
        member = name + ".npy"
        where = f"{self.path}: member {member!r}"
        try:
            info = self.zf.getinfo(member)
        except KeyError:
            raise ValueError(f"{self.path}: not a fastbp model file: the array {name!r} is missing") from None
        if info.compress_type != zipfile.ZIP_STORED:
            # fastbp writes stored members only; a compressed one is how a small file inflates without limit
            # (bzip2 and LZMA decompress with no output bound), so it is refused before a byte is inflated.
            raise ValueError(f"{where} is compressed (zip method {info.compress_type}): refused, fastbp "
                             "writes uncompressed members only")
        # Memory is bounded by the bytes really on disk: a stored member holds its declared size.
        if (info.compress_size != info.file_size
                or info.header_offset + info.compress_size > self.file_size):
            raise ValueError(f"{where} is truncated or its size field is corrupted ({info.file_size} bytes "
                             f"declared, the file has {self.file_size})")
        with self.zf.open(info) as handle:
            found_shape, fortran_order, dtype = _parse_header(handle, where)
            if dtype.hasobject or dtype.kind not in kinds:
                raise ValueError(f"{where} has dtype {dtype}, expected one of kind {kinds!r} "
                                 "(object arrays are never loaded)")
            count = int(np.prod(found_shape, dtype=object)) if found_shape else 1
            if count > max_elements:
                raise ValueError(f"{where} has shape {found_shape}, larger than allowed ({max_elements} "
                                 "elements)")
            if shape is not None and tuple(found_shape) != tuple(shape):
                raise ValueError(f"{where} has shape {found_shape}, expected {tuple(shape)}")
            nbytes = count * dtype.itemsize
            if nbytes > info.file_size - handle.tell():
                raise ValueError(f"{where} is truncated ({nbytes} bytes of data declared, "
                                 f"{info.file_size - handle.tell()} present)")
            data = handle.read(nbytes)  # bounded: at most the declared bytes, which fit in the file
            if len(data) != nbytes:
                raise ValueError(f"{where} is truncated")
            while handle.read(65536):  # to the end (at most file_size bytes), so zipfile checks the CRC
                pass
        array = np.frombuffer(data, dtype=dtype, count=count)
        return array.reshape(found_shape, order="F" if fortran_order else "C").copy()


def load(path, with_optimizer=False):
    """Read a file written by :func:`save` as plain data: ``(config, params)``, every parameter bit for bit.

    ``config`` holds ``layer_sizes``, ``activations``, ``loss`` and ``dtype``; ``params`` is the flat
    parameter buffer (native byte order). ``fastbp.Network.load`` builds the network and checks the
    description (activation and loss names). With ``with_optimizer``, returns ``(config, params,
    optimizer)``, ``optimizer`` being ``None`` for a file saved without one, else ``{"class": name,
    "state_dict": {...}}`` (checked against its checksum; ``Optimizer.load_state_dict`` checks the values).

    Raises
    ------
    ValueError
        When the file is not a valid fastbp model file (corrupted, truncated, edited, wrong version,
        inconsistent shapes, non-finite parameters, object arrays, compressed members, a hostile ``.npy``
        header), or is not a regular file. ``TypeError`` when ``path`` is not a str, bytes or os.PathLike.
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = _check_path(path)
    path, given = _shown(path), path  # str for messages; the name as given (str or bytes) for opening
    # The opened descriptor is checked, not the name (a FIFO swapped in after a check on the name would
    # block the open): see _open_regular.
    handle, file_size = _open_regular(given)
    try:
        with handle, zipfile.ZipFile(handle) as zf:
            archive = _Archive(zf, path, file_size)
            version = archive.read("format_version", "iu", 1, shape=())
            if int(version) != FORMAT_VERSION:
                raise ValueError(f"{path}: format version {int(version)} is not supported (this fastbp "
                                 f"reads version {FORMAT_VERSION})")
            sizes = archive.read("layer_sizes", "iu", _MAX_LAYERS)
            if sizes.ndim != 1 or sizes.size < 2 or (sizes < 1).any():
                raise ValueError(f"{path}: layer_sizes must be at least two positive integers; got "
                                 f"{sizes.tolist()[:10]}")
            sizes = tuple(int(size) for size in sizes)
            _, total = _spec.param_offsets(sizes)
            if total > _MAX_PARAMS:
                raise ValueError(f"{path}: layer_sizes imply {total} parameters, more than allowed "
                                 f"({_MAX_PARAMS})")
            activations = archive.read("activations", "U", _MAX_LAYERS, shape=(len(sizes) - 1,))
            activations = [str(name) for name in activations]
            loss = str(archive.read("loss", "U", 1, shape=()))
            dtype_name = str(archive.read("dtype", "U", 1, shape=()))
            if dtype_name not in ("float32", "float64"):
                raise ValueError(f"{path}: dtype must be float32 or float64; got {dtype_name[:40]!r}")
            dtype = np.dtype(dtype_name)
            params = archive.read("params", "f", total, shape=(total,))
            if params.dtype.itemsize != dtype.itemsize:
                raise ValueError(f"{path}: params have dtype {params.dtype}, expected {dtype_name}")
            checksum = str(archive.read("checksum", "U", 1, shape=()))
            optimizer = None
            if with_optimizer:
                optimizer = _read_optimizer(archive, zf, path, total, dtype)
    except ValueError:
        raise
    except MemoryError:
        raise ValueError(f"{path}: not a valid fastbp model file (its declared sizes do not fit in "
                         "memory)") from None
    except Exception as error:
        # What a damaged archive raises from zipfile (BadZipFile, EOFError, struct.error, OSError, zlib and
        # LZMA errors, NotImplementedError for unknown methods, RuntimeError for encrypted members...).
        raise ValueError(f"{path}: not a valid fastbp model file ({type(error).__name__}: {error})") from None
    if checksum != _checksum(sizes, activations, loss, dtype_name, params):
        raise ValueError(f"{path}: checksum mismatch: the file is corrupted or was modified")
    if not np.isfinite(params).all():
        raise ValueError(f"{path}: params contain NaN or infinity")
    config = {"layer_sizes": list(sizes), "activations": activations, "loss": loss, "dtype": dtype_name}
    if not with_optimizer:
        return config, params.astype(dtype)  # exact: same dtype (a byte order change is lossless)
    if optimizer is not None:
        state_dict = optimizer["state_dict"]
        if optimizer.pop("checksum") != _optimizer_checksum(checksum, optimizer["class"], state_dict["rule"],
                                                            state_dict["hyper"], state_dict["state"],
                                                            state_dict["steps"]):
            raise ValueError(f"{path}: optimizer checksum mismatch: the file is corrupted or was modified")
        if not (np.isfinite(state_dict["state"]).all() and np.isfinite(state_dict["hyper"]).all()):
            raise ValueError(f"{path}: the optimizer state contains NaN or infinity")
        state_dict["state"] = state_dict["state"].astype(dtype)
        state_dict["hyper"] = state_dict["hyper"].astype(np.float64)
        state_dict["steps"] = int(state_dict["steps"])
    return config, params.astype(dtype), optimizer


def _read_optimizer(archive, zf, path, n_params, dtype):
    """The optimizer members as ``{"class", "checksum", "state_dict"}``, or None when the file has none."""
    names = set(zf.namelist())
    present = [name for name in _OPTIMIZER_MEMBERS if name + ".npy" in names]
    if not present:
        return None
    if len(present) != len(_OPTIMIZER_MEMBERS):
        missing = [name for name in _OPTIMIZER_MEMBERS if name not in present]
        raise ValueError(f"{path}: the optimizer state is incomplete (missing {', '.join(missing)})")
    class_name = str(archive.read("optimizer_class", "U", _MAX_NAME, shape=()))
    if not class_name.isidentifier():
        raise ValueError(f"{path}: optimizer_class must be a class name; got {class_name[:_MAX_NAME]!r}")
    rule = str(archive.read("optimizer_rule", "U", _MAX_NAME, shape=()))
    if rule not in _spec.STATE_ROWS:
        raise ValueError(f"{path}: optimizer_rule must be one of {sorted(_spec.STATE_ROWS)}; got "
                         f"{rule[:_MAX_NAME]!r}")
    hyper = archive.read("optimizer_hyper", "f", _spec.N_HYPER, shape=(_spec.N_HYPER,))
    if hyper.dtype.itemsize != 8:
        raise ValueError(f"{path}: optimizer_hyper has dtype {hyper.dtype}, expected float64")
    rows = len(_spec.STATE_ROWS[rule])
    state = archive.read("optimizer_state", "f", rows * n_params, shape=(rows, n_params))
    if state.dtype.itemsize != dtype.itemsize:
        raise ValueError(f"{path}: optimizer_state has dtype {state.dtype}, expected {dtype.name}")
    steps = archive.read("optimizer_steps", "i", 1, shape=())
    if steps.dtype.itemsize != 8 or int(steps) < 0:
        raise ValueError(f"{path}: optimizer_steps must be a non-negative int64")
    checksum = str(archive.read("optimizer_checksum", "U", 1, shape=()))
    return {"class": class_name, "checksum": checksum,
            "state_dict": {"rule": rule, "hyper": hyper, "state": state, "steps": int(steps)}}
