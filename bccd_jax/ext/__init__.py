"""Optional native extensions. Nothing here is built or loaded when bccd_jax is imported.

`onednn`: oneDNN convolutions (forward, input gradient, kernel and bias gradient) as XLA FFI custom
calls for `bccd_jax.models.conv.Conv` on CPU. Built by the user:

    pip install -e '.[onednn]'          # oneDNN's library and headers (onednn-cpu-gomp, onednn-devel-cpu-gomp)
    python -m bccd_jax.ext.build        # compiles bccd_jax/ext/_build/libbccd_onednn.so
"""
