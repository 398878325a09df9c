"""GATE 10 (opengate) as a reference dose engine: build, export, run, read back.

``opengate`` is imported only inside the functions that need it (optional extra ``gate``).
See :mod:`dosimetry.dose.gate.bridge` for the data path and :mod:`dosimetry.dose.gate.g4data`
for how the Geant4 data sets are found without ever being downloaded.
"""

from dosimetry.dose.gate.engine import dose_gate

__all__ = ["dose_gate"]
