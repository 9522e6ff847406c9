"""Data: text, LJSpeech-format corpora, the built-in espeak-ng corpus, statistics, speakers.

text.py (normalisation, symbols, TextProcessor), ljspeech.py (metadata, the mel and feature
cache, the dataset, collate and the length-bucketed sampler), corpus.py and sentences.py (the
built-in prosody corpus), stats.py (per-utterance prosody statistics) and speakers.py (the
speaker table a checkpoint carries).
"""
