"""Image and DICOM input/output."""
