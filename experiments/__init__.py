"""Runnable studies: `python -m experiments.<name>`; each declares variants (bccd_jax.experiment) for bccd_jax.runner."""
