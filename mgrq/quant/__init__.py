"""Quantization primitives: functions (:mod:`.functional`), quantizer modules
(:mod:`.quantizers`), named points (:mod:`.point`) and calibration helpers (:mod:`.calib`)."""
