"""Type stub for the compiled kernel ``fastbp._core`` (same interface as ``fastbp._reference``)."""

from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt

_Floats = npt.NDArray[np.floating]

__all__ = [
    "Workspace",
    "predict",
    "loss_and_gradient",
    "train_epoch",
    "optimizer_step",
    "all_finite",
    "predict_sparse",
    "loss_and_gradient_sparse",
    "train_epoch_sparse",
]

class Workspace:
    dtype: np.dtype
    max_batch: int
    layer_sizes: tuple[int, ...]
    grad: _Floats
    sparse_input: bool
    def __init__(
        self,
        layer_sizes: Sequence[int],
        activation_codes: Sequence[int],
        loss_code: int,
        dtype: npt.DTypeLike,
        max_batch: int,
        sparse_input: bool = ...,
    ) -> None: ...
    def _small_layers(self, batch: int) -> tuple[bool, ...]: ...
    def _buffer_addresses(self) -> dict[str, int]: ...

ACTIVATION_CODES: dict[str, int]
LOSS_CODES: dict[str, int]
STATUS_CODES: dict[str, int]
PROGRESS_INTERVAL: float

def predict(ws: Workspace, params: _Floats, X: _Floats, out: _Floats) -> None: ...
def loss_and_gradient(
    ws: Workspace, params: _Floats, X: _Floats, Y: _Floats, sample_weight: _Floats | None = None
) -> float: ...
def all_finite(values: _Floats) -> bool: ...
def train_epoch(
    ws: Workspace,
    params: _Floats,
    X: _Floats,
    Y: _Floats,
    sample_weight: _Floats | None,
    batch_size: int,
    rule: int,
    hyper: npt.NDArray[np.float64],
    state: _Floats,
    steps: npt.NDArray[np.int64],
    shuffle_key: int | npt.NDArray[np.intp],
    progress: Callable[[int, float, float], object] | None = None,
    *,
    threads: int = 1,
    check_inputs: bool = False,
) -> tuple[float, float, int, int]: ...
def optimizer_step(
    params: _Floats,
    grad: _Floats,
    rule: int,
    hyper: npt.NDArray[np.float64],
    state: _Floats,
    steps: npt.NDArray[np.int64],
) -> None: ...
_Indices = npt.NDArray[np.intp]

def predict_sparse(
    ws: Workspace, params: _Floats, data: _Floats, indices: _Indices, indptr: _Indices, out: _Floats
) -> None: ...
def loss_and_gradient_sparse(
    ws: Workspace,
    params: _Floats,
    data: _Floats,
    indices: _Indices,
    indptr: _Indices,
    Y: _Floats,
    sample_weight: _Floats | None = None,
) -> float: ...
def train_epoch_sparse(
    ws: Workspace,
    params: _Floats,
    data: _Floats,
    indices: _Indices,
    indptr: _Indices,
    Y: _Floats,
    sample_weight: _Floats | None,
    batch_size: int,
    rule: int,
    hyper: npt.NDArray[np.float64],
    state: _Floats,
    steps: npt.NDArray[np.int64],
    shuffle_key: int | npt.NDArray[np.intp],
    progress: Callable[[int, float, float], object] | None = None,
    *,
    threads: int = 1,
) -> tuple[float, float, int, int]: ...
def _enum_codes() -> dict[str, object]: ...
def _team_jobs() -> int: ...
def _blas_thresholds(min_batch: int | None = ..., min_work: int | None = ...) -> tuple[int, int]: ...
def _small_gemm_l2_bytes(value: int | None = None) -> int: ...
def _small_gemm_thresholds(
    min_batch: int | None = ...,
    max_batch: int | None = ...,
    min_inputs: int | None = ...,
    min_outputs: int | None = ...,
) -> tuple[int, int, int, int]: ...
def _small_gemm_available() -> bool: ...
def _small_gemm_isas() -> list[str]: ...
def _small_gemm_isa(name: str | None = ...) -> str: ...
