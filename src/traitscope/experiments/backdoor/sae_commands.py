"""`traitscope sae-train` and `traitscope sae-evaluate`: the backdoor experiment's SAE stages."""

from __future__ import annotations

import argparse

from traitscope.experiments.backdoor.settings import SAELayerSettings, SAETrainSettings
from traitscope.settings import add_settings_argument


def _sae_train(a: argparse.Namespace) -> None:
    from traitscope.experiments.backdoor.sae_stages import sae_train

    sae_train(a.capture, a.settings, a.out, a.record, a.png, a.model_name)


def _sae_evaluate(a: argparse.Namespace) -> None:
    from traitscope.experiments.backdoor.sae_stages import sae_evaluate

    sae_evaluate(a.sae, a.capture, a.settings, a.record, a.png)


def add_sae_commands(add) -> None:
    p = add("sae-train", _sae_train, "train a TopK sparse autoencoder on one layer's per-token activations")
    p.add_argument("--capture", required=True, help="capture.json with per-token activations at the layer")
    add_settings_argument(p, SAETrainSettings)
    p.add_argument("--out", required=True, help="SAE folder to write (SAELens layout)")
    p.add_argument("--record", required=True, help="training record JSON")
    p.add_argument("--png", required=True, help="training figure")
    p.add_argument("--model-name", required=True, help="recorded in cfg.json metadata")

    p = add("sae-evaluate", _sae_evaluate, "reconstruction quality of a SAELens-format SAE on a capture")
    p.add_argument("--sae", required=True, help="SAE folder (cfg.json + sae_weights.safetensors)")
    p.add_argument("--capture", required=True, help="capture.json with per-token activations at the layer")
    add_settings_argument(p, SAELayerSettings)
    p.add_argument("--record", required=True, help="evaluation record JSON")
    p.add_argument("--png", required=True, help="figure")
