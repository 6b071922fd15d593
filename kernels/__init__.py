"""Pallas kernels (installed as ``stepjax.kernels``). Each kernel has a pure-JAX reference and a dispatcher."""
