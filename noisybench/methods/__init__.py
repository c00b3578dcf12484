"""Training methods. One file per method; see `base.LossMethod` for the protocol."""
