"""rptdose digital patients: anatomy, kinetics, SPECT acquisition simulation, writers, truth."""
