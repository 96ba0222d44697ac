"""ESamp's math as pure functions and classes over tensors, independent of any backend:
filters (temperature -> top-k -> top-p -> min-p), the distiller bank, the fusion step, the
per-token signals, and the per-run pipeline that strings them together
(filter -> predict -> fuse, then learn). Backends hand in logits and hidden states."""
