"""Adapters that put the plugin (prosody_vae.plugin) into other toolkits' own models and trainers.

    from prosody_vae.integrations.coqui import ProsodyTacotron2, ProsodyTacotron2Config   # pip install prosody_vae[coqui]
    from prosody_vae.integrations.espnet import ProsodyTacotron2, ProsodyText2Speech      # the `espnet` extra

Each adapter is a module of its own that imports its host toolkit, so importing this package
imports none of them; a missing host is an ImportError that names the extra to install.
latent.py is what they share (encoder, controller, KL term, dual step, how z is drawn) and
imports no host; torchaudio_gate.py stands in for a torchaudio that does not load.
"""
