"""Tests of the digital patients (phantoms/)."""
