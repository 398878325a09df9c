"""The ``rptdose`` command-line interface (thin: parse, call a library function, print)."""
