"""Absorbed dose: emissions, dose voxel kernels, the fast voxel Monte Carlo and dose engines.

* :mod:`~dosimetry.dose.emissions` — which radiations are included (:class:`Emission`);
* :mod:`~dosimetry.dose.mc` — the fast voxel Monte Carlo (torch);
* :mod:`~dosimetry.dose.kernels` — dose voxel kernels (S-values), made by the MC and cached;
* :mod:`~dosimetry.dose.convolution` — FFT convolution;
* :mod:`~dosimetry.dose.engines` — LED, DVK and MC dose maps from a TIA map and a CT.

Importing this package is cheap: torch is only imported by the Monte Carlo modules.
"""
