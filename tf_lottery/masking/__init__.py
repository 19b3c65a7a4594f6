"""Masks on tf_keras layers: the wrapper, sparsity distributions and mask selection."""
