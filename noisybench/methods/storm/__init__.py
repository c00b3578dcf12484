"""STORM (Heck et al., AAAI 2025): per-sample loss weights from a meta-learned rescaler Ω, trained
on the noisy training data itself. The method, its equations mapped to the modules below and every
deliberate departure from the paper: docs/methods/storm.md.

  step.py       `STORM`, the training step that composes the parts
  rescaler.py   Ω (`Rescaler`), its compiled CPU forward/backward, its optimizer step (`adam_step`)
  lookahead.py  the lookahead θ*, its derivative and the runner's optimizer (`InnerStep`)
  meta.py       the second-order term: what step t leaves for step t+1 (`Pending`, `SecondOrder`)
  dropout.py    the dropout passes (`Passes`) and their masks (`fast_dropout`), RNG replay
  features.py   the 19 per-sample features and their memory (`GroupMemory`)
  directional.py a_m = <u, ∇ℓ_m> from recorded layers (`Capture`)
  weighting.py  the weight normalisations s(w)
  base_loss.py  the base loss from the method registry
  host.py       numpy views of tensors for the compiled loops
"""
from noisybench.methods.storm.base_loss import build_base_loss
from noisybench.methods.storm.dropout import (
                                              MASK_LEVELS,
                                              STORM_DROPOUT,
                                              _random_bits,
                                              dropout_passes,
                                              fast_dropout,
                                              replay_rng,
                                              rng_state,
                                              set_rng_state,
)
from noisybench.methods.storm.lookahead import HYPERPARAMETERS, LOOKAHEADS, lookahead, lookahead_vjp, sgd_lookahead_vjp
from noisybench.methods.storm.rescaler import BN_EPS, INIT_STD, Rescaler, _Omega, adam_step
from noisybench.methods.storm.step import BN_SCOPES, FEATURES, META_SOURCES, STORM
from noisybench.methods.storm.weighting import WEIGHT_NORMS

__all__ = ["BN_EPS", "BN_SCOPES", "FEATURES", "HYPERPARAMETERS", "INIT_STD", "LOOKAHEADS",
           "MASK_LEVELS", "META_SOURCES", "STORM", "STORM_DROPOUT", "WEIGHT_NORMS", "Rescaler",
           "_Omega", "_random_bits", "adam_step", "build_base_loss", "dropout_passes",
           "fast_dropout", "lookahead", "lookahead_vjp", "replay_rng", "rng_state", "set_rng_state",
           "sgd_lookahead_vjp"]
