"""Dagster wiring, one module per stage. The work itself happens in the library packages."""
