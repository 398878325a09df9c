"""FFT convolution of a 3-D map with a small centred kernel ('same' output), numpy/scipy.

Pure numeric kernel for the DVK engine. Compared with ``scipy.signal.fftconvolve(a, k,
mode="same")`` it

* pads each axis only as far as the 'same' output of a circular convolution needs (at most
  n + h, h the kernel half-width; nothing when the data are zero within h of both ends, as TIA
  maps outside the body are), rounded up to a 2·3·5-smooth length (:func:`fft_shape`);
* transforms the kernel by a pruned FFT (one axis at a time, only over the non-zero planes)
  and caches its spectrum for repeated use with the same grid;
* computes in single precision (complex64) with ``workers`` threads.

Single precision gives relative rounding errors ~1e-6 of the largest output value; tiny
negative values that rounding produces where the true result is ~0 are kept (callers may clip).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from dosimetry.errors import InputError

__all__ = ["fft_convolve_same", "fft_shape"]


def fft_shape(
    data_shape: tuple[int, ...],
    kernel_shape: tuple[int, ...],
    support: tuple[tuple[int, int], ...] | None = None,
) -> tuple[int, ...]:
    """FFT lengths for a 'same' convolution, per axis.

    With the kernel centre at index 0 of a circular convolution of length L, the outputs
    0 … n−1 are free of wrap-around when L ≥ max(n + h − a, b + h + 1), where h is the kernel
    half-width and [a, b] the index range where the data are non-zero along that axis (a = 0,
    b = n − 1 when ``support`` is not given): data that are zero within h of both ends need no
    padding at all. The length is rounded up to a 2·3·5-smooth number
    (``scipy.fft.next_fast_len``).
    """
    import scipy.fft

    last = len(data_shape) - 1
    out = []
    for ax, (n, k) in enumerate(zip(data_shape, kernel_shape, strict=True)):
        a, b = (0, n - 1) if support is None else support[ax]
        h = k // 2
        need = max(n, n + h - a, b + h + 1)
        out.append(scipy.fft.next_fast_len(need, real=(ax == last)))
    return tuple(out)


def _support(a: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """Per-axis (first, last) index of the non-zero data, or None if all zero."""
    nz = a != 0
    out = []
    for ax in range(a.ndim):
        other = tuple(k for k in range(a.ndim) if k != ax)
        idx = np.flatnonzero(nz.any(axis=other))
        if idx.size == 0:
            return None
        out.append((int(idx[0]), int(idx[-1])))
    return tuple(out)


@functools.lru_cache(maxsize=8)
def _kernel_spectrum_cached(shape: tuple[int, ...], kshape: tuple[int, ...],
                            raw: bytes, dtype: str, workers: int) -> np.ndarray:
    import scipy.fft

    k = np.frombuffer(raw, dtype=dtype).reshape(kshape)
    lz, ly, lx = shape
    kz, ky, kx = kshape
    hz, hy, hx = kz // 2, ky // 2, kx // 2
    # x: wrap the kernel so that its centre is at index 0, then rfft along x
    a = np.zeros((kz, ky, lx), dtype=dtype)
    a[:, :, np.arange(-hx, hx + 1) % lx] = k
    a = scipy.fft.rfft(a, axis=2, workers=workers)
    b = np.zeros((kz, ly, a.shape[2]), dtype=a.dtype)
    b[:, np.arange(-hy, hy + 1) % ly, :] = a
    b = scipy.fft.fft(b, axis=1, workers=workers)
    c = np.zeros((lz, ly, b.shape[2]), dtype=b.dtype)
    c[np.arange(-hz, hz + 1) % lz] = b
    return scipy.fft.fft(c, axis=0, workers=workers, overwrite_x=True)


def fft_convolve_same(
    data: np.ndarray, kernel: np.ndarray, workers: int | None = None
) -> np.ndarray:
    """Linear convolution of ``data`` with a centred ``kernel``, output of ``data``'s shape.

    ``out[i] = Σⱼ data[i − j] · kernel[c + j]`` over the kernel offsets j (c its centre), with
    zeros outside ``data`` — the same as ``scipy.signal.fftconvolve(data, kernel, "same")``
    for odd kernel sizes.

    Parameters
    ----------
    data : numpy.ndarray
        (z, y, x) real array.
    kernel : numpy.ndarray
        (kz, ky, kx) real array with odd sizes, centred on its middle element.
    workers : int, optional
        Threads for scipy.fft (default: the number of CPUs).

    Returns
    -------
    numpy.ndarray
        float32 array of ``data``'s shape.
    """
    import scipy.fft

    a = np.asarray(data, dtype=np.float32)
    k = np.ascontiguousarray(kernel, dtype=np.float32)
    if a.ndim != 3 or k.ndim != 3:
        raise InputError(f"data and kernel must be 3-D; got shapes {a.shape} and {k.shape}")
    if any(s % 2 == 0 for s in k.shape):
        raise InputError(f"kernel sizes must be odd (centred kernel), got {k.shape}")
    workers = int(workers or os.cpu_count() or 1)
    support = _support(a)
    if support is None:
        return np.zeros(a.shape, dtype=np.float32)
    shape = fft_shape(a.shape, k.shape, support)
    spec = _kernel_spectrum_cached(shape, k.shape, k.tobytes(), "float32", workers)
    f = scipy.fft.rfftn(a, shape, workers=workers)
    f *= spec
    out = scipy.fft.irfftn(f, shape, workers=workers, overwrite_x=True)
    nz, ny, nx = a.shape
    return np.ascontiguousarray(out[:nz, :ny, :nx])
