"""mgrq: post-training quantization of Vision Transformers under one protocol.

``import mgrq`` imports torch only; mlflow, submitit and matplotlib load inside the code that
needs them (tracking, the suite runner, reports).
"""

__version__ = "0.1.0"
