"""Signals: wav in and out, the log-mel front end, per-frame pitch, the reference's prosody tracks.

mel.py (AudioConfig, load/save, MelSpectrogram, Griffin-Lim: the audio constants live here),
pitch.py (log-F0, voicing and energy per frame, Praat), prosody_tracks.py (the speaker-relative
tracks a "prosody" reference encoder reads) and postfilter.py (the mel's global variance).
"""
