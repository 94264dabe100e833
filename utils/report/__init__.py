"""The report of a dataset config's Pick-a-back run (its command: tools/report.py)."""
