"""The bccd_jax CNN family in plain Keras 3 on its JAX backend, as a Keras user writes it: Keras' layers, defaults and
optimizers.

- `import_keras()`: Keras with KERAS_BACKEND=jax, set here (`use_jax_backend`) before Keras is first imported (a
  UserError when Keras is not installed, `pip install -e '.[keras]'`, or was imported with another backend).
- `keras_cnn(cfg, hw, seed)`: a Sequential model of ModelConfig `cfg` at image size `hw`: uint8 input,
  Rescaling(1/255), per conv block Conv2D(relu) ... MaxPooling2D(2), Flatten, Dense(relu), Dropout (when the
  config has dropout), Dense and a softmax Activation, every kernel drawn by the Keras initialiser of
  bccd_jax's name for it (`INITS`: glorot_uniform, he_normal, lecun_normal), biases zero; weights drawn from
  `keras.utils.set_random_seed(seed)`. Only the study's plain CNNs (x/255 input, no batch norm) are built.
  The Flatten of channels-last maps is the (H, W, C) order of bccd_jax's reshape, and kernels are HWIO and
  (in, out) in both: bccd_jax's parameters load as they are (`load_flax_params`).
- `keras_optimizer(name, lr)`: SGD, RMSprop or Adam with Keras' defaults (no momentum; rho 0.9, epsilon 1e-7;
  beta 0.9 / 0.999, epsilon 1e-7) at the study's learning rate unless `lr` is given.
- `compile_study(model, name, lr, loss)`: that optimizer, Keras' categorical cross-entropy (for integer labels:
  sparse_categorical_crossentropy) and accuracy, the loss one of `LOSSES`:
  - "probabilities" (the default): on the softmax output, as Keras 3 computes it on its JAX backend: from
    probabilities clipped to [1e-7, 1 - 1e-7], so one image's loss is at most -ln(1e-7) = 16.1 and its gradient
    is 0 beyond: a network whose every softmax saturates can never move again;
  - "logits": from the logits (the model built with `softmax=False`), which is what tf.keras and Keras 3 on its
    TensorFlow backend do for a softmax output in a compiled graph (they take the softmax's input "to prevent
    collapsing zero when training"), and what bccd_jax's log-softmax loss is: unbounded, its gradient never 0.
    Standalone Keras 2.2 on TensorFlow clipped probabilities, as Keras 3 on JAX does; the study does not name its
    Keras version, so both are run.
  `logits_model` gives the logits of either model.
- Keras 3's RMSprop adds epsilon inside the square root, as optax (bccd_jax) does; standalone Keras 2 (keras
  2.0-2.3) added it outside, sqrt(v) + 1e-7. Keras' Adam adds epsilon to the square root of the uncorrected second
  moment: optax's Adam with epsilon / sqrt(1 - 0.999^t) at step t (tests/test_keras_peer.py).
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import numpy as np

from bccd_jax.config import INITS, OPTIMIZER_DEFAULT_LR, ModelConfig
from bccd_jax.errors import UserError
from bccd_jax.models.cnn import feature_map_size

BACKEND = "jax"
KERAS_OPTIMIZERS = {"sgd": "SGD", "rmsprop": "RMSprop", "adam": "Adam"}
"""bccd_jax's optimizer names -> Keras' classes."""
assert set(KERAS_OPTIMIZERS) == set(OPTIMIZER_DEFAULT_LR)
LOSSES = ("probabilities", "logits")
"""Where Keras' cross-entropy is computed from: the clipped softmax probabilities (Keras 3 on JAX, standalone Keras 2.2)
or the logits (tf.keras, Keras 3 on TensorFlow, bccd_jax)."""


def use_jax_backend() -> None:
    """KERAS_BACKEND=jax, for a Keras not imported yet (Keras reads it once, at its import)."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = BACKEND


def import_keras():
    """The keras module on its JAX backend."""
    use_jax_backend()
    try:
        import keras
    except ImportError:
        raise UserError("Keras is not installed; pip install -e '.[keras]' (Keras 3 on its JAX backend)") from None
    if keras.backend.backend() != BACKEND:
        raise UserError(f"Keras was imported with the {keras.backend.backend()} backend before bccd_jax could choose "
                        f"JAX; start a fresh process (KERAS_BACKEND={BACKEND})")
    return keras


def check_config(cfg: ModelConfig, hw: tuple[int, int]) -> ModelConfig:
    """`cfg`, validated, when it is one of the plain CNNs this module builds; a UserError otherwise."""
    cfg.validate()
    extras = [what for what, on in (("VGG16", cfg.arch == "vgg16"), ("batch norm", cfg.batch_norm),
                                    ("feature centering", cfg.feature_centering), ("grayscale", cfg.grayscale),
                                    (f"input_norm={cfg.input_norm}", cfg.input_norm != "scale"),
                                    (f"dtype={cfg.dtype}", cfg.dtype != "float32")) if on]
    if extras:
        raise UserError(f"the Keras CNN is the study's plain CNN (x/255 input, float32); it has no {', '.join(extras)}")
    feature_map_size(cfg, hw)
    return cfg


def keras_cnn(cfg: ModelConfig, hw: tuple[int, int], seed: int = 0, softmax: bool = True):
    """The Keras Sequential model of `cfg` at image size `hw`, its weights drawn after set_random_seed(seed); without
    `softmax` it ends at the logits (the same weights: the softmax layer has none)."""
    keras = import_keras()
    check_config(cfg, hw)
    keras.utils.set_random_seed(int(seed))
    L = keras.layers
    init = INITS[cfg.init]
    layers: list[Any] = [keras.Input((*hw, 3), dtype="uint8"), L.Rescaling(1.0 / 255.0)]
    for block in cfg.conv_blocks:
        layers += [L.Conv2D(f, cfg.kernel_size, padding=cfg.padding.lower(), activation="relu",
                            kernel_initializer=init) for f in block]
        layers.append(L.MaxPooling2D(2))
    layers += [L.Flatten(), L.Dense(cfg.dense_features, activation="relu", kernel_initializer=init)]
    if cfg.dropout:
        layers.append(L.Dropout(cfg.dropout))
    layers.append(L.Dense(cfg.num_classes, kernel_initializer=init))
    if softmax:
        layers.append(L.Activation("softmax"))
    return keras.Sequential(layers, name=f"{cfg.arch}_{init}")


def keras_optimizer(name: str, learning_rate: float | None = None):
    """Keras' optimizer `name` (sgd, rmsprop, adam) with its defaults, at the study's learning rate by default."""
    keras = import_keras()
    if name not in KERAS_OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(KERAS_OPTIMIZERS)}")
    lr = OPTIMIZER_DEFAULT_LR[name] if learning_rate is None else float(learning_rate)
    return getattr(keras.optimizers, KERAS_OPTIMIZERS[name])(learning_rate=lr)


def ends_in_softmax(model) -> bool:
    keras = import_keras()
    return isinstance(model.layers[-1], keras.layers.Activation)


def compile_study(model, optimizer: str, learning_rate: float | None = None, loss: str = "probabilities"):
    """`model` compiled as the study trained: the optimizer, cross-entropy from `loss` (one of LOSSES), accuracy."""
    keras = import_keras()
    if loss not in LOSSES:
        raise UserError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if ends_in_softmax(model) != (loss == "probabilities"):
        raise UserError(f"the {loss} loss needs a model built with softmax={loss == 'probabilities'}")
    model.compile(optimizer=keras_optimizer(optimizer, learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if loss == "logits"
                  else "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def logits_model(model):
    """`model`'s logits: a model sharing its layers that stops before the softmax (or `model` when it has none)."""
    keras = import_keras()
    return keras.Model(model.inputs[0], model.layers[-2].output) if ends_in_softmax(model) else model


def weighted_layers(model) -> list:
    """The Conv2D and Dense layers of `model`, in order."""
    keras = import_keras()
    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]


def load_flax_params(model, params: Mapping[str, Any]) -> None:
    """Copy one seed's bccd_jax CNN parameters (Conv_0.., Dense_0, Dense_1) into the Keras model of the same
    config: the same arrays, no transposition."""
    convs = sorted((k for k in params if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    names = convs + ["Dense_0", "Dense_1"]
    layers = weighted_layers(model)
    if len(layers) != len(names) or any(n not in params for n in names):
        raise UserError(f"parameters {sorted(params)} do not match a Keras CNN with {len(layers)} weighted layers")
    for layer, name in zip(layers, names):
        kernel, bias = (np.asarray(params[name][k], np.float32) for k in ("kernel", "bias"))
        if kernel.shape != tuple(layer.kernel.shape):
            raise UserError(f"{name} kernel has shape {kernel.shape}; the Keras layer {layer.name} expects "
                            f"{tuple(layer.kernel.shape)}")
        layer.set_weights([kernel, bias])


def seed_generator_states(model) -> list:
    """The states of `model`'s random-seed generators (its Dropout layers'), in layer order. `model.save` stores
    them, but `keras.models.load_model` draws them afresh, so a resumed run restores them
    (`set_seed_generator_states`) to draw an uninterrupted run's dropout masks. By position: their names count the
    generators a process has made before."""
    return [np.asarray(v.value).tolist() for v in _seed_generator_variables(model)]


def set_seed_generator_states(model, states: list) -> None:
    have = _seed_generator_variables(model)
    if len(have) != len(states):
        raise UserError(f"the checkpoint has {len(states)} random-seed generators, the model {len(have)}")
    for v, value in zip(have, states):
        v.assign(np.asarray(value, dtype=np.asarray(v.value).dtype))


def _seed_generator_variables(model) -> list:
    return [v for v in model.variables if v.path.endswith("seed_generator_state")]
