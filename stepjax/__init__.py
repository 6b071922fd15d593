"""stepjax: a JAX-native library for the StepFun model families and training objectives."""

__version__ = "0.1.0"
