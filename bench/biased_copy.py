"""Give a trained student a bias on every Conv and Linear, for the bias-exactness checks of docs/results.md.

    python bench/biased_copy.py RUN OUT [--fraction 0.2] [--seed 0]

Each bias is drawn uniformly from [-fraction * theta, fraction * theta], theta the threshold of the
LIF layer the Conv/Linear feeds (the output layer: its last LIF's threshold), so the biases move
spikes in every layer without silencing it. The copy keeps every other parameter; it is a fixture
for export agreement (every target must compute ``u = lam u + W s + b`` exactly), not a way to train.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from lasnn_deploy.student import Conv, Linear, SpikingStudent, load_student, save_student


def biased_copy(student: SpikingStudent, fraction: float, seed: int) -> SpikingStudent:
    """``student`` with ``bias: true`` on every Conv/Linear and biases of ``fraction`` of their LIF's threshold."""
    cfg = student.config
    layers = tuple(dataclasses.replace(l, bias=True) if isinstance(l, (Conv, Linear)) else l for l in cfg.layers)
    out = SpikingStudent(cfg.replace(layers=layers))
    state = student.state_dict()
    thetas = student.thresholds.detach()
    lif_of = {i: k for k, i in enumerate(cfg.spiking_layers)}
    gen = torch.Generator().manual_seed(seed)
    for i, layer in enumerate(layers):
        if isinstance(layer, (Conv, Linear)):
            # the LIF it feeds: its own, or (a block's closing conv) the one at its Shortcut; none for the output
            feeds = next((j for j in range(i, len(layers)) if j in lif_of), None)
            theta = thetas[lif_of[feeds]] if feeds is not None else thetas[-1]
            size = layer.out_channels if isinstance(layer, Conv) else layer.out_features
            state[f"body.{i}.bias"] = (torch.rand(size, generator=gen) * 2 - 1) * fraction * theta
    out.load_state_dict(state)
    return out.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("out")
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(save_student(biased_copy(load_student(args.run), args.fraction, args.seed), args.out))


if __name__ == "__main__":
    main()
