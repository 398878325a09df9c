"""Absorbed dose: emissions, dose voxel kernels, the fast voxel Monte Carlo and dose engines.

* :mod:`~dosimetry.dose.emissions` — which radiations are included (:class:`Emission`);
* :mod:`~dosimetry.dose.mc` — the fast voxel Monte Carlo (torch);
* :mod:`~dosimetry.dose.kernels` — dose voxel kernels (S-values), made by the MC and cached;
* :mod:`~dosimetry.dose.convolution` — FFT convolution;
* :mod:`~dosimetry.dose.engines` — LED, DVK, MC and deep dose maps from a TIA map and a CT;
* :mod:`~dosimetry.dose.deep` — the deep engine's networks, training and weights;
* :mod:`~dosimetry.dose.gamma` — the 3-D gamma index for comparing dose maps.

Importing this package is cheap: torch is only imported by the Monte Carlo modules.
"""
