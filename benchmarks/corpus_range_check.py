"""Does espeak-ng's range factor set the measured F0 range? The reference side of range transfer.

    python benchmarks/corpus_range_check.py [--n 60]

Corpus sentences (4+ words) in three demo voices at rate 175, pitch 50, level 100 and a range
factor drawn from 10-90; prints r(range factor, pyin 5-95% range in semitones) and the mean range
per band of the factor.
"""

import argparse
import random

import numpy as np

from prosody_vae.data.corpus import Factors, synthesize
from prosody_vae.data.sentences import make_sentence
from prosody_vae.evaluation.metrics import prosody_summary

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=60)
args = parser.parse_args()
rng, rows = random.Random(0), []
for index in range(args.n):
    sentence = make_sentence(11, index)
    if sentence.n_words < 4:
        continue
    factors = Factors(rng.choice(["en-us+m1", "en-us+f3", "en+m3"]), 175, 50, rng.randint(10, 90), 100)
    rows.append((factors.pitch_range, prosody_summary(synthesize(sentence.text, factors), 22050).f0_range_semitones))
factor, measured = np.array(rows).T
print(f"utterances {len(rows)}  r(range factor, measured range st) {np.corrcoef(factor, measured)[0, 1]:.2f}")
for low in (10, 30, 50, 70):
    band = (factor >= low) & (factor < low + 20)
    print(f"  factor {low}-{low + 19}: {measured[band].mean():.2f} +- {measured[band].std():.2f} st (n={band.sum()})")
