"""Inference: the Synthesizer, the calibrated knobs, the model card and deployment export.

synthesizer.py (Synthesizer: transfer, sampling, interpolation, vocoding), knobs.py (the knobs a
calibrated model carries), calibrate.py (fitting them), model_card.py, quantize.py (int8 / bf16
decoder weights), export_onnx.py (the reference encoder as ONNX) and export_program.py (the whole
synthesiser as torch.export programs).
"""
