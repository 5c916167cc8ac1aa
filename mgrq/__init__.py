"""mgrq: post-training quantization of Vision Transformers under one protocol.

``import mgrq`` loads no heavy dependency (not even torch); torch loads with the modules that use it, mlflow, submitit and matplotlib load inside the code that
needs them (tracking, the suite runner, reports).
"""

__version__ = "0.1.0"
