"""Where the overhead benchmark's inputs are: the checkout, the demo's data and the bare Flower app."""

from __future__ import annotations

from pathlib import Path

__all__ = ["BARE_APP", "DATA", "ROOT"]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "heart-disease"
BARE_APP = ROOT / "benchmarks" / "bare_flower"
