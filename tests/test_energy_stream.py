"""``energy`` batch by batch: exact running sums, a report that does not depend on the batch size,
and a data set loaded one batch at a time (issue 29)."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
import torch
from helpers import CountingSet, make_student, small_resnet
from hypothesis import given, settings
from hypothesis import strategies as st
from lasnn_deploy.hw_targets import energy
from lasnn_deploy.hw_targets.moments import Moments
from lasnn_deploy.hw_targets.report import energy_report


def _exact_mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and population standard deviation of the exact values, each rounded once (Fractions, Decimal sqrt)."""
    exact = [Fraction(v) for v in values]
    mean = sum(exact, Fraction(0)) / len(exact)
    variance = sum(((v - mean) ** 2 for v in exact), Fraction(0)) / len(exact)
    with localcontext() as ctx:
        ctx.prec = 200
        std = (Decimal(variance.numerator) / Decimal(variance.denominator)).sqrt()
    return float(mean), float(std)


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
magnitudes = st.sampled_from([1.0, 1e-12, 1e-3, 1e6])


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=40), magnitudes, st.integers(1, 7))
def test_moments_are_the_exact_mean_and_spread_whatever_the_batches(values, scale, batch):
    """Sums kept exactly: the mean and standard deviation are the exact ones rounded once, for any split."""
    data = np.array(values) * scale
    moments = Moments()
    for start in range(0, len(data), batch):
        moments.add(data[start : start + batch])
    assert (moments.count, moments.mean, moments.std) == (len(data), *_exact_mean_std(data.tolist()))


def test_moments_of_a_non_finite_value_are_numpy_s():
    moments = Moments()
    moments.add(np.array([1.0, np.inf]))
    assert moments.mean == np.inf and np.isnan(moments.std)
    moments.add(np.array([np.nan]))
    assert np.isnan(moments.mean)


def _without_neurobench(result: dict) -> dict:
    """The report less NeuroBench's section (NeuroBench averages its ActivationSparsity per batch, in float)."""
    return {k: v for k, v in json.loads(json.dumps(result)).items() if k != "neurobench"}


@pytest.mark.parametrize(
    "name,student,hw",
    [
        ("poisson, biased, every profile", lambda: make_student("poisson", timesteps=3, bias=True), "all"),
        ("residual, direct, mesh and latencies", lambda: small_resnet().float(), "loihi_calibrated,cmos45"),
    ],
)
def test_energy_does_not_depend_on_the_batch_size(tmp_path, name, student, hw):
    """Counts, energies, traffic and time of 7 samples in batches of 1, 3 and 7: the same report to the
    last digit (Poisson sample i drawn with seed + i in whichever batch it falls)."""
    model = student()
    x = torch.rand(7, *model.config.input_shape)
    labels = torch.arange(7) % model.config.num_classes
    reports = [
        _without_neurobench(
            energy_report(model, x, labels, hw=hw, out_dir=tmp_path / str(b), seed=5, batch_size=b, progress=False)
        )
        for b in (7, 3, 1)
    ]
    assert reports[0] == reports[1] == reports[2], name


@pytest.mark.parametrize("encoding", ["direct", "poisson"])
def test_energy_streams_a_data_set_a_batch_at_a_time(tmp_path, monkeypatch, encoding):
    """Structural, not timing: when batch k is counted, no sample past batch k has been loaded, so
    memory holds a batch however large the set; the report equals the one of the same images as a tensor."""
    student = make_student(encoding, timesteps=3)
    x, labels = torch.rand(10, 1, 8, 8), torch.arange(10) % 5
    whole = energy_report(student, x, labels, hw="loihi", out_dir=tmp_path / "t", seed=2, batch_size=4, progress=False)
    data = CountingSet(x, labels)
    seen = []  # (samples counted in this batch, samples loaded when it was counted)
    real = energy.count_events

    def count_events(layers, trace, timesteps):
        seen.append((trace.logits.shape[0], data.loaded))
        return real(layers, trace, timesteps)

    monkeypatch.setattr(energy, "count_events", count_events)
    streamed = energy_report(student, data, hw="loihi", out_dir=tmp_path / "d", seed=2, batch_size=4, progress=False)
    assert seen == [(4, 4), (4, 8), (2, 10)]
    assert json.loads(json.dumps(streamed)) == json.loads(json.dumps(whole)) and whole["accuracy"] is not None
