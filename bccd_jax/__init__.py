"""bccd_jax: white-blood-cell classification on BCCD in JAX/Flax.

A functional reproduction of a Keras CNN study (optimizers, overfitting,
regularization, architecture, VGG16 transfer) with multi-seed statistics.
"""

from bccd_jax._malloc import configure_malloc as _configure_malloc
from bccd_jax._xla_env import configure_xla_cpu as _configure_xla_cpu

_configure_malloc()  # freed buffers stay for reuse: see bccd_jax/_malloc.py
_configure_xla_cpu()  # before any JAX backend starts: see bccd_jax/_xla_env.py

CLASS_NAMES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
"""The four white-cell subtypes, in the Kaggle folder (alphabetical) order; label i is CLASS_NAMES[i]."""

__version__ = "0.1.0"
