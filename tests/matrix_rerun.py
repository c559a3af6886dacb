"""Run in a new process by the task-matrix test: each registered model, loaded with plain MLflow,
predicts on every node's raw table, and the lab's in-house evaluation reruns on its test split.

    python tests/matrix_rerun.py PLAN.json TRACKING_URI FEDERATION_KEY

Prints one JSON line: per case and node, the predicted columns and those the signature declares,
the rows predicted and scored, and the in-house metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow

from lab.core.data import check_frame, read_raw
from lab.core.spec import load_spec
from lab.registry.rerun import evaluate_table, load_model


def rerun(case: dict[str, Any], tracking_uri: str, federation_key: Path) -> dict[str, Any]:
    spec = load_spec(case["spec"])
    model = mlflow.pyfunc.load_model(case["model"])
    declared = model.metadata.get_output_schema().input_names()
    lab_model = load_model(case["model"], tracking_uri, federation_key)
    nodes = {}
    for name, source in case["nodes"]:
        raw, _ = read_raw(source, spec.format_for(name))  # the table as the node holds it
        out = model.predict(raw)
        nodes[name] = {
            "columns": list(out.columns),
            "declared": declared,
            "raw_rows": len(raw),
            "predictions": len(out),
            "scored": int(out["prediction"].notna().sum()),
            "kept_rows": len(
                check_frame(
                    raw.drop(columns=[spec.target.column]),
                    spec,
                    source=source,
                    file_format=spec.format_for(name),
                    require_target=False,
                )
            ),
            "metrics": evaluate_table(lab_model, source, node=name).metrics,
        }
    return {"case": case["case"], "nodes": nodes}


def main() -> None:
    plan_path, tracking_uri, federation_key = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    mlflow.set_tracking_uri(tracking_uri)
    with open(plan_path, encoding="utf-8") as fh:
        plan = json.load(fh)
    print(json.dumps([rerun(case, tracking_uri, federation_key) for case in plan]))


if __name__ == "__main__":
    main()
