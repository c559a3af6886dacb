"""The evaluation oracle: a curious coordinator reads test patients' diagnoses out of model scores.

A message of threshold models on cholesterol (each predicts disease above its threshold; the
thresholds fall between the test patients' values) makes the node score every one: two models
that differ on one patient differ in accuracy by that patient's row, so the differences spell out
the diagnosis of every patient alone at their value. A node holds the line on two fronts: it scores
no more models than the run's preparation planned (its candidates for a contribution valuation,
at most ``limits.max-candidates``), and it releases every score with Gaussian noise spread over
the planned models (``limits.scores-epsilon`` per run): the more models a coordinator asks it to
score, the noisier each score.

The attack is played at its strongest the defaults let through: a plan declaring a valuation over
seven nodes (128 candidate models), the threshold models in one message, and an attacker that
knows every test patient's cholesterol and combines every released metric (accuracy, loss, AUC).
Its number of right guesses is measured against a fair coin's: the number the best attacker can
expect, from the noise the node reports with its scores, lies within the coin's 95% interval. And
the number this attacker actually got is no more than its own guesses allow at that noise: at most
the 99.99% quantile of its right guesses simulated with every patient moving every metric by its
full row bound (neighbouring guesses share a model's noise, so they are not independent tosses and
a binomial interval would be too narrow); a node whose noise were smaller than it reports fails it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.stats import binom, norm

from lab.contract.messages import CandidateScores
from lab.contract.plan import RunPlan
from lab.core.training import load_node_data

from .node import SPEC, Node, answer, refused, zero_model

#: A valuation over seven nodes: 2**7 = 128 candidate models planned, under the default 256.
GREEDY = RunPlan(rounds=1, local_steps=1, batch_size=16, learning_rate=0.05, scored_rounds=0, contributions=True,
                 nodes=7)  # fmt: skip
STEEP = 1000.0


def thresholds(node: Node) -> tuple[list[float], list[int | None]]:
    """Thresholds between the test patients' distinct cholesterol values, and for each interval
    between two neighbouring thresholds the diagnosis (0/1) of the one patient alone in it (None
    where it holds more)."""
    test = load_node_data(node.name, str(node.table), SPEC).test
    chol = test.features["chol"].to_numpy(dtype=float)
    assert test.target is not None
    values = np.unique(chol)
    cuts = [float(values[0] - 1), *((values[1:] + values[:-1]) / 2).tolist(), float(values[-1] + 1)]
    labels: list[int | None] = []
    for low, high in zip(cuts, cuts[1:], strict=False):
        inside = (chol > low) & (chol < high)
        labels.append(int(test.target[inside][0]) if inside.sum() == 1 else None)
    return cuts, labels


def threshold_model(cut: float) -> dict[str, np.ndarray]:
    """A linear model (under the identity scaler) predicting disease exactly where chol > cut."""
    model = zero_model()
    model["0.weight"][0, SPEC.encoded_names.index("chol")] = STEEP
    model["0.bias"][0] = -STEEP * cut
    return model


def guesses(scores: list[dict[str, float]], noise: dict[str, float]) -> list[bool]:
    """Per neighbouring pair of thresholds: whether the patient between is guessed diseased, from
    the change of every noisy metric, each weighted by its noise (the best combination of Gaussian
    views), or from accuracy alone where the scores are exact."""
    signs = {"accuracy": -1.0, "loss": 1.0, "auc": -1.0}  # a diseased patient lost: accuracy and AUC fall
    used = [m for m in signs if m in noise] or ["accuracy"]
    out = []
    for before, after in zip(scores, scores[1:], strict=False):
        evidence = sum(signs[m] * (after[m] - before[m]) / noise.get(m, 1.0) ** 2 for m in used)
        out.append(evidence > 0)
    return out


def attacker_quantile(noise: dict[str, float], scale: float, diseased: list[bool], at: list[int], q: float) -> float:
    """The ``q`` quantile of how many of the patients between thresholds ``at`` (diagnoses
    ``diseased``) ``guesses`` gets right, when each metric is released with ``noise`` and each
    patient moves each metric by its row bound (``noise / scale``): 200,000 simulated releases of
    the whole message, drawn from a fixed seed."""
    metrics = sorted(noise)
    weight = np.array([1.0 / noise[m] for m in metrics])  # guesses' 1 / noise**2, in units of noise
    toward = np.where(np.array(diseased), 1.0, -1.0)[:, None] / scale  # the patient's move, in noise
    rng = np.random.default_rng(25)
    counts = []
    for _ in range(10):
        z = rng.standard_normal((20_000, max(at) + 2, len(metrics)))
        evidence = ((toward + z[:, 1:, :][:, at] - z[:, :-1, :][:, at]) * weight).sum(-1)
        counts.append(((evidence > 0) == np.array(diseased)).sum(1))
    return float(np.quantile(np.concatenate(counts), q))


def _scored(node: Node, run_id: int, cuts: list[float]) -> CandidateScores:
    reply = node.candidates(run_id, node.instructions(GREEDY), [threshold_model(c) for c in cuts])
    assert not reply.has_error(), reply.error.reason
    return CandidateScores.of(reply)


def test_more_models_than_the_run_planned_are_refused(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    cuts, _ = thresholds(node)
    assert len(cuts) > 64
    answer(node.prepare(7))  # the demo's plan: contributions over 4 nodes, 16 candidate models
    refused(node.candidates(7, node.instructions(), [threshold_model(c) for c in cuts]), "plan")
    refused(node.prepare(8, RunPlan(1, 1, 16, 0.05, 0, contributions=True, nodes=9)), "limits.max-candidates")


def test_without_noise_the_oracle_gives_every_lone_patients_diagnosis(tmp_path: Path) -> None:
    # The attack's teeth: a node started without an agreement releases exact scores.
    node = Node(tmp_path / "cleveland", bound=False)
    cuts, labels = thresholds(node)
    answer(node.prepare(7, GREEDY, epochs=1))
    lone = [
        (g, label)
        for g, label in zip(guesses(_scored(node, 7, cuts).scores, {}), labels, strict=True)
        if label is not None
    ]
    assert len(lone) >= 50 and all(g == bool(label) for g, label in lone)


def test_at_the_defaults_the_oracle_gets_no_more_right_than_a_coin(tmp_path: Path) -> None:
    node = Node(tmp_path / "cleveland")
    cuts, labels = thresholds(node)
    answer(node.prepare(7, GREEDY, epochs=1))
    scored = _scored(node, 7, cuts)
    lone = [i for i, label in enumerate(labels) if label is not None]
    right = sum(guesses(scored.scores, scored.noise)[i] == bool(labels[i]) for i in lone)
    # What the best attacker can expect to get right. One patient moves each released metric by at
    # most its row bound (1 / n for accuracy, LOSS_CLIP / n for loss, 1 / smaller class for AUC),
    # which the node's noise is that bound times one scale s: each metric's view of the patient has
    # a signal-to-noise of at most 1 / s, and the best guess from a difference of two noisy scores
    # is right with probability Phi(sqrt(sum of squares) / sqrt(2)).
    scale = scored.noise["accuracy"] * scored.num_examples
    assert all(m in scored.noise for m in ("accuracy", "loss", "auc"))
    expected = len(lone) * float(norm.cdf(math.sqrt(3) / (math.sqrt(2) * scale)))
    _, coin_95 = binom.interval(0.95, len(lone), 0.5)
    assert expected <= coin_95, (expected, coin_95, len(lone))
    diseased = [bool(labels[i]) for i in lone]
    most = attacker_quantile({m: scored.noise[m] for m in ("accuracy", "loss", "auc")}, scale, diseased, lone, 0.9999)
    assert right <= most, (right, most, len(lone))
    # The node booked what it released: the run's scores stay within its per-run budget.
    (booking,) = node.ledger().runs().values()
    assert 0 < booking["scores_epsilon"] <= 10.0 + 1e-9


def test_candidates_stacked_unevenly_are_refused_before_any_is_scored(tmp_path: Path) -> None:
    """The candidates travel stacked, one array per parameter over every model: a coordinator that
    stacks more models in one parameter than in another (to have the node read past a model, or
    score more than it counts) is refused, and nothing is scored or booked."""
    from flwr.app import Array, ArrayRecord, RecordDict

    from lab.contract import keys

    node = Node(tmp_path / "cleveland")
    answer(node.prepare(7))
    model = zero_model()
    stacked = {name: np.stack([values] * (2 if i == 0 else 3)) for i, (name, values) in enumerate(model.items())}
    content = RecordDict(
        {
            keys.CONFIG: node.instructions().to_record(),
            keys.CANDIDATES: ArrayRecord({name: Array(values) for name, values in stacked.items()}),
        }
    )
    reply = node.send(f"evaluate.{keys.CANDIDATES_ACTION}", content, 7)
    assert reply.has_error() and reply.error.code == keys.REFUSED  # a malformed message, named as such
    assert "stack different numbers of models: [2, 3]" in reply.error.reason
    assert node.audit()[-1]["decision"] == "refused"
    assert all(entry.get("what") != "candidate" for entry in node.ledger().entries())
