"""Rebuild the three site files from scikit-learn's bundled copy of the diabetes table.

    .venv/bin/python data/diabetes/make_sites.py

The 442 rows are shuffled with a fixed seed and cut into three sites of 180, 150 and 112 rows. The
split is ours: the published table has no sites, so these are three silos of one population.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import sklearn

HERE = Path(__file__).resolve().parent
DATA = Path(sklearn.__file__).parent / "datasets" / "data"
COLUMNS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
SITES = {"clinic-north": 180, "clinic-south": 150, "clinic-east": 112}


def main() -> None:
    features = pd.read_csv(DATA / "diabetes_data_raw.csv.gz", sep=" ", header=None, names=COLUMNS)
    target = pd.read_csv(DATA / "diabetes_target.csv.gz", header=None, names=["progression"])
    table = pd.concat([features, target["progression"].round().astype(int)], axis=1)
    order = np.random.default_rng(2004).permutation(len(table))
    start = 0
    for name, rows in SITES.items():
        table.iloc[order[start : start + rows]].to_csv(HERE / f"{name}.csv", index=False)
        start += rows


if __name__ == "__main__":
    main()
