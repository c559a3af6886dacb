"""The PyTorch models a spec can name, and the predictor shared by nodes and reruns."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from lab.core.data import Table
from lab.core.preprocess import Scaler, encode
from lab.core.spec import TaskSpec

__all__ = ["Predictor", "build_model", "loss_fn", "state_from_numpy", "state_to_numpy"]


def build_model(spec: TaskSpec, *, seed: int | None = None) -> nn.Module:
    """The spec's model family: a linear model or an MLP with ReLU hidden layers.

    Outputs are logits (binary, multiclass) or the predicted value (regression).
    """
    if seed is not None:
        torch.manual_seed(seed)
    width = len(spec.encoded_names)
    layers: list[nn.Module] = []
    for hidden in spec.hidden_layers:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, spec.target.num_outputs))
    return nn.Sequential(*layers)


def loss_fn(spec: TaskSpec) -> nn.Module:
    """The training loss for the spec's target kind."""
    if spec.target.kind == "binary":
        return nn.BCEWithLogitsLoss()
    if spec.target.kind == "multiclass":
        return nn.CrossEntropyLoss()
    return nn.MSELoss()


def targets_tensor(y: np.ndarray, spec: TaskSpec) -> torch.Tensor:
    """Targets shaped as ``loss_fn`` expects them."""
    if spec.target.kind == "multiclass":
        return torch.as_tensor(y, dtype=torch.long)
    return torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)


def state_to_numpy(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The model's parameters as named numpy arrays."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def state_from_numpy(model: nn.Module, arrays: dict[str, np.ndarray]) -> nn.Module:
    """Load named numpy arrays into ``model`` (strict: every key must match)."""
    model.load_state_dict(OrderedDict((k, torch.from_numpy(np.asarray(v))) for k, v in arrays.items()))
    return model


@dataclass
class Predictor:
    """Raw rows in, scores out: the spec's encoding, the scaler, then the network.

    Nodes evaluate with it and the registered model predicts with it, so a rerun
    in-house computes exactly what the federation recorded. A regression model learns the
    target standardised by ``target_scaler`` (one column) and its scores are given back in the
    target's own units, so a target in euros trains with the settings of one near 1.
    """

    spec: TaskSpec
    scaler: Scaler
    model: nn.Module
    target_scaler: Scaler = field(default_factory=lambda: Scaler.identity(1))

    def inputs(self, features: pd.DataFrame | Table) -> torch.Tensor:
        """The scaled input matrix for typed feature columns (a node's checked rows keep theirs)."""
        if isinstance(features, Table):
            return torch.from_numpy(features.scaled(self.spec, self.scaler))
        return torch.from_numpy(self.scaler.transform(encode(features, self.spec)))

    def targets(self, y: np.ndarray) -> torch.Tensor:
        """Targets as the network learns them: class codes, or the standardised value."""
        if self.spec.target.kind == "regression":
            y = self.target_scaler.transform(np.asarray(y, dtype=np.float64).reshape(-1, 1)).reshape(-1)
        return targets_tensor(y, self.spec)

    def scores(self, features: pd.DataFrame | Table) -> np.ndarray:
        """Probability of the positive class (binary), class probabilities
        (multiclass, one column per class) or predicted values in the target's units (regression)."""
        self.model.eval()
        with torch.no_grad():
            out = self.model(self.inputs(features))
            if self.spec.target.kind == "binary":
                out = torch.sigmoid(out).reshape(-1)
            elif self.spec.target.kind == "multiclass":
                out = torch.softmax(out, dim=1)
            else:
                out = out.reshape(-1)
        scores: np.ndarray = out.numpy().astype(np.float64)
        if self.spec.target.kind == "regression":
            scores = scores * float(self.target_scaler.std[0]) + float(self.target_scaler.mean[0])
        return scores

    def loss(self, features: pd.DataFrame | Table, y: np.ndarray) -> float:
        """Mean training loss on these rows (for regression: on the standardised target)."""
        self.model.eval()
        with torch.no_grad():
            return float(loss_fn(self.spec)(self.model(self.inputs(features)), self.targets(y)))

    def row_losses(self, features: pd.DataFrame | Table, y: np.ndarray) -> np.ndarray:
        """Each row's loss, as ``loss`` averages them."""
        self.model.eval()
        criterion = loss_fn(self.spec)
        setattr(criterion, "reduction", "none")  # noqa: B010 - every loss of loss_fn has it
        with torch.no_grad():
            out = criterion(self.model(self.inputs(features)), self.targets(y))
        losses: np.ndarray = out.numpy().reshape(len(y)).astype(np.float64)
        return losses

    def is_finite(self) -> bool:
        """Whether every parameter is a finite number (training that diverged leaves NaN or inf)."""
        return all(bool(torch.isfinite(p).all()) for p in self.model.state_dict().values())
