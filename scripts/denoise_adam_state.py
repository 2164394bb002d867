"""Where Adam's steps go in a denoiser run: per weight tensor, from the run's checkpoint.

For each parameter of ``RUN/checkpoint`` it prints the root of Adam's bias-corrected second
moment (the size of a typical gradient element), the mean size of the step Adam takes as a
share of the learning rate, and the share of the step's denominator that is Adam's epsilon.
A tensor whose gradients are near epsilon moves at a fraction of the rate however useful it is.

    python scripts/denoise_adam_state.py runs/dn/NAME
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file

from captioner.denoise.model import DenoiserConfig, DenoiserNet
from captioner.training.denoiser import parameter_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a denoise train --out folder")
    args = parser.parse_args()
    train_config = json.loads((args.run / "train_config.json").read_text())
    meta = json.loads((args.run / "checkpoint" / "state.json").read_text())
    state = load_file(str(args.run / "checkpoint" / "state.safetensors"))
    net = DenoiserNet(DenoiserConfig.from_dict(train_config["model"]))
    name_of = {id(p): name for name, p in net.named_parameters()}
    # the optimizer's state is numbered in the order of the training's parameter groups
    factor = float(train_config.get("gain_lr_factor", 1.0))
    names = [name_of[id(p)] for g in parameter_groups(net, 1.0, factor) for p in g["params"]]
    groups = meta["optimizer_param_groups"]
    beta1, beta2 = groups[0]["betas"]
    eps = groups[0]["eps"]
    print(f"{'parameter':30s} {'rms grad':>9s} {'step/lr':>8s} {'eps share':>9s}")
    for index, name in enumerate(names):
        step = float(state[f"optim.{index}.step"])
        second = (state[f"optim.{index}.exp_avg_sq"] / (1 - beta2**step)).sqrt()
        first = state[f"optim.{index}.exp_avg"] / (1 - beta1**step)
        step_share = float((first / (second + eps)).abs().mean())
        eps_share = float((eps / (second + eps)).mean())
        print(f"{name:30s} {float(second.mean()):9.2e} {step_share:8.3f} {eps_share:9.3f}")


if __name__ == "__main__":
    main()
