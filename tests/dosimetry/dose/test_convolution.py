"""FFT convolution against scipy.signal.fftconvolve and a point source."""

import numpy as np
import pytest
import scipy.signal

from dosimetry.dose.convolution import fft_convolve_same, fft_shape
from dosimetry.errors import InputError


@pytest.mark.parametrize("shape", [(20, 25, 31), (7, 9, 8), (40, 33, 35)])
def test_matches_fftconvolve(shape):
    rng = np.random.default_rng(1)
    a = rng.random(shape)
    k = rng.random((5, 7, 3))
    ours = fft_convolve_same(a, k)
    ref = scipy.signal.fftconvolve(a, k, mode="same")
    # single-precision FFT: rounding ~1e-7 of the largest value per element, accumulated
    # over log₂(N) stages
    np.testing.assert_allclose(ours, ref, atol=2e-6 * ref.max())


def test_zero_margins_need_no_padding_and_stay_exact():
    rng = np.random.default_rng(2)
    a = np.zeros((30, 40, 50))
    a[6:-6, 6:-6, 6:-6] = rng.random((18, 28, 38))
    k = rng.random((11, 11, 11))
    assert fft_shape(a.shape, k.shape, ((6, 23), (6, 33), (6, 43))) == (30, 40, 50)
    np.testing.assert_allclose(fft_convolve_same(a, k),
                               scipy.signal.fftconvolve(a, k, mode="same"), atol=2e-6 * 300)


def test_point_source_reproduces_kernel():
    rng = np.random.default_rng(3)
    k = rng.random((5, 5, 5))
    a = np.zeros((12, 12, 12))
    a[3, 6, 7] = 1.0
    out = fft_convolve_same(a, k)
    np.testing.assert_allclose(out[1:6, 4:9, 5:10], k, atol=1e-6)
    out[1:6, 4:9, 5:10] = 0
    assert np.abs(out).max() < 1e-6
    # the kernel is cut at the grid's edge, not wrapped around
    b = np.zeros((12, 12, 12))
    b[0, 0, 0] = 1.0
    edge = fft_convolve_same(b, k)
    np.testing.assert_allclose(edge[:3, :3, :3], k[2:, 2:, 2:], atol=1e-6)
    assert np.abs(edge[-2:]).max() < 1e-6


def test_errors_and_zero_input():
    with pytest.raises(InputError, match="kernel sizes must be odd"):
        fft_convolve_same(np.ones((4, 4, 4)), np.ones((2, 3, 3)))
    with pytest.raises(InputError, match="must be 3-D"):
        fft_convolve_same(np.ones((4, 4)), np.ones((3, 3, 3)))
    assert not fft_convolve_same(np.zeros((4, 4, 4)), np.ones((3, 3, 3))).any()
