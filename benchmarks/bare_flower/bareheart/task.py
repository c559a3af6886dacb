"""The data and the model: the UCI heart-disease file of one hospital, and a logistic regression."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

COLUMNS = [
    "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak",
    "slope", "ca", "thal", "num",
]  # fmt: skip


def load_data(path: str) -> tuple[TensorDataset, TensorDataset]:
    """One hospital's rows, split 66/34 (seed 43) and standardised with the training rows' mean and std."""
    frame = pd.read_csv(path, header=None, names=COLUMNS, na_values="?")
    frame = frame.drop(columns=["slope", "ca", "thal"]).dropna()
    target = (frame.pop("num") > 0).astype("float32").to_numpy()
    frame["cp"] = pd.Categorical(frame["cp"], categories=[1, 2, 3, 4])
    frame["restecg"] = pd.Categorical(frame["restecg"], categories=[0, 1, 2])
    features = pd.get_dummies(frame, columns=["cp", "restecg"], drop_first=True, dtype="float32").to_numpy("float32")
    stratify = target if np.bincount(target.astype(int)).min() > 2 else None  # Switzerland has 1 negative
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=0.34, random_state=43, stratify=stratify
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0
    return (
        TensorDataset(torch.tensor((x_train - mean) / std), torch.tensor(y_train).unsqueeze(1)),
        TensorDataset(torch.tensor((x_test - mean) / std), torch.tensor(y_test).unsqueeze(1)),
    )


def make_model() -> nn.Module:
    """Logistic regression on the 13 features (the sigmoid is in the loss)."""
    return nn.Linear(13, 1)


def train(model: nn.Module, data: TensorDataset, *, steps: int, batch_size: int, learning_rate: float) -> float:
    """``steps`` minibatch SGD updates; the mean training loss."""
    torch.set_num_threads(1)  # four nodes share a small machine (the lab's nodes do the same)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    criterion = nn.BCEWithLogitsLoss()
    model.train()
    losses: list[float] = []
    while len(losses) < steps:
        for x, y in loader:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return sum(losses) / len(losses)


def test(model: nn.Module, data: TensorDataset) -> tuple[float, float]:
    """Loss and accuracy on ``data``."""
    x, y = data.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y).item()
    accuracy = ((logits > 0).float() == y).float().mean().item()
    return loss, accuracy
