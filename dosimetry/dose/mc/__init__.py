"""The fast voxel Monte Carlo (torch; CPU or CUDA).

* :mod:`~dosimetry.dose.mc.tables` — interaction tables built from materials;
* :mod:`~dosimetry.dose.mc.transport` — photon (Woodcock) and electron (CSDA, random hinge)
  transport kernels, with their physics and approximations;
* :mod:`~dosimetry.dose.mc.engine` — sources, batches, tallies: :func:`simulate`.

The submodules import torch; this package file does not.
"""
