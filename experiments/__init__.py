"""Runnable studies: `python -m experiments.<name>`; each declares its variants over `bccd_jax.experiment`."""
