"""Evaluation: objective metrics, quality measures, `prosody-vae evaluate` and the analyses.

metrics.py (MCD-DTW, F0 errors, rate), quality.py (DNSMOS, speaker similarity, prosody
correlations), speaker_leakage.py (the speaker probe and cross-speaker transfer), evaluate.py and
analysis.py (rate-distortion and the entropy-sum diagnostic).
"""
