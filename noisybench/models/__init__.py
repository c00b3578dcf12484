"""Plain nn.Modules. Each takes `input_shape` and `num_classes` from the runner."""
