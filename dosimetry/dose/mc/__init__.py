"""The fast voxel Monte Carlo (torch; CPU or CUDA).

* :mod:`~dosimetry.dose.mc.tables` — interaction tables built from materials;
* :mod:`~dosimetry.dose.mc.transport` — photon (Woodcock) and electron (CSDA, random hinge)
  transport kernels, with their physics and approximations;
* :mod:`~dosimetry.dose.mc.engine` — sources, batches, tallies: :func:`simulate`;
* :mod:`~dosimetry.dose.mc.split` — a run split by seed into jobs on Dask and merged with its
  uncertainty (our MC, and GATE runs through :mod:`dosimetry.dose.gate`).

The submodules import torch; this package file does not.
"""
