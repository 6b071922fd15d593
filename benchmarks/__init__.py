"""Side-by-side benchmarks (``python -m benchmarks.NAME``); each ends with one ``RESULT <name> <value> <unit>`` line."""
