"""Where does a transferred pitch land: in the target voice's register or in the reference's?

    python benchmarks/speaker_register_check.py --data CORPUS --checkpoint RUN/checkpoints/step-00001500.pt

Each of the first `--n` held-out references is spoken (one fixed sentence, posterior mean) in its
own voice and in the voice whose register lies farthest from its own. For the cross-voice outputs,
the mean semitone distance of the predicted F0 (the pitch head's, geometric mean over voiced
frames; no vocoder, no pitch tracker) from the target voice's register and from the reference
voice's register, with the registers from the checkpoint's speaker table. Relative transfer lands
near the target's register; absolute transfer near the reference's. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import torch

from prosody_vae import Synthesizer
from prosody_vae.data.ljspeech import read_metadata, split_train_val

SENTENCE = "We bought apples, bread and honey at the market."


def semitones(a: float, b: float) -> float:
    return 12 * math.log2(a / b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--pitch", choices=("relative", "absolute"), default="relative")
    args = parser.parse_args()
    torch.set_num_threads(1)
    synth = Synthesizer.from_checkpoint(args.checkpoint)
    _, held_out = split_train_val(read_metadata(args.data), synth.config.data.n_val, synth.config.data.seed)
    register = {name: synth.speaker_table.f0_mean_hz(name) for name in synth.speakers}
    to_target, to_reference, own_voice = [], [], []
    for utt in held_out[:args.n]:
        target = max(synth.speakers, key=lambda name: abs(math.log(register[name] / register[utt.speaker])))
        for voice in (utt.speaker, target):
            out = synth.tts(SENTENCE, reference=utt.wav_path, speaker=voice, reference_speaker=utt.speaker,
                            pitch_mode=args.pitch, vocode=False, max_decoder_steps=150)
            f0 = out.f0[0]
            mean = float(f0[f0 > 0].log().mean().exp())
            if voice == utt.speaker:
                own_voice.append(abs(semitones(mean, register[voice])))
            else:
                to_target.append(abs(semitones(mean, register[target])))
                to_reference.append(abs(semitones(mean, register[utt.speaker])))
    print(json.dumps({"checkpoint": args.checkpoint, "pitch": args.pitch, "references": len(to_target),
                      "cross_voice_st_from_target_register": float(np.mean(to_target)),
                      "cross_voice_st_from_reference_register": float(np.mean(to_reference)),
                      "own_voice_st_from_register": float(np.mean(own_voice))}))


if __name__ == "__main__":
    main()
