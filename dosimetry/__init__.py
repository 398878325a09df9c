"""rptdose dosimetry: images and I/O, study manifest, nuclide data, kinetics and dose engines.

Importing this package is cheap and silent; heavy or optional dependencies are imported inside
the functions that need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rptdose")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
