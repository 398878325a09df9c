"""Tests of dosimetry.kinetics."""
