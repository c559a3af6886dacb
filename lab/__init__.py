"""The federated data science lab: the analyst's and operator's side."""

__version__ = "0.1.0"
