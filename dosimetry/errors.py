"""The rptdose error hierarchy.

Every error the library raises on purpose derives from :class:`RptdoseError`, so the CLI can turn
it into one readable line and a non-zero exit. Messages name the file, the field and the bad value.
"""

from __future__ import annotations


class RptdoseError(Exception):
    """Base class of every error rptdose raises on purpose."""


class InputError(RptdoseError, ValueError):
    """A file, option or value given by the user is missing, unreadable or invalid."""


class GeometryError(RptdoseError):
    """Images that must share physical space do not (grid, overlap, direction)."""


class FitError(RptdoseError):
    """A fit could not be carried out at all (as opposed to a fit that ran and was rejected)."""


class NuclideError(InputError):
    """A nuclide name is not known to the ICRP-107 data."""


class MissingDataError(InputError):
    """Information needed to go on is absent; ``missing`` lists what, with how to supply it."""

    def __init__(self, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing: list[str] = list(missing or [])


class DependencyError(RptdoseError):
    """An optional dependency (extra) needed for this operation is not installed."""
