"""Differentiable primitives, one module per family; ``minissl.functional`` re-exports them."""
