"""Errors of the registration stage."""

from __future__ import annotations

from dosimetry.errors import GeometryError


class RegistrationError(GeometryError):
    """A timepoint could not be brought onto the reference frame.

    Raised instead of continuing with misaligned images: the similarity metric got worse, the
    transform folds space, the result is implausible (body outlines do not overlap after
    registration, displacements far beyond patient repositioning), or the SPECT does not
    overlap its CT.

    Attributes
    ----------
    timepoint : str
        Label of the timepoint that failed.
    reason : str
        What was wrong, with the measured value and the limit.
    """

    def __init__(self, timepoint: str, reason: str) -> None:
        super().__init__(f"registration of timepoint {timepoint!r} failed: {reason}")
        self.timepoint = timepoint
        self.reason = reason

    def __reduce__(self):  # keeps the two-argument constructor picklable (pytest-xdist, dask)
        return (type(self), (self.timepoint, self.reason))
