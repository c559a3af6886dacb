"""The small suite tests/test_suite_stops_cleanly_e2e.py runs and stops with SIGTERM. Its modules
are not named ``test_*.py``: `make test` does not collect them; that test passes them by path."""
