"""rptdose planning: radiobiology, protocols and limits, activity optimiser, workflow, report."""
