"""The Tacotron host: text encoder, z, attention decoder, postnet and pitch head.

config.py (TacotronConfig and its presets), tacotron.py (ProsodyTacotron), decoder.py (the one
decoder step and its loop), attention.py, layers.py, inputs.py (input checks shared with export),
speaker_adversary.py and cpu_kernels.py (the decoder's CPU fast path).
"""
