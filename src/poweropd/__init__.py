"""poweropd: on-policy distillation of language models with bounded power rewards."""

__version__ = "0.1.0"
