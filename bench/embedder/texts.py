"""Chat-message-length texts for the embedder benchmarks: N texts of 6 to 40 words from a fixed
vocabulary of everyday chat, deterministic (seeded), one JSON string per line."""
import json
import random
import sys

WORDS = (
    "i you we they the a to of and in on for with about at my our your this that it is was be "
    "will can should would could meeting design mobile app screen button user users team project "
    "release friday monday tomorrow today week deadline budget review code bug fix test build deploy "
    "server database query index search memory session message chat reply thanks please sorry great "
    "good idea plan launch customer client feedback price invoice email call phone travel flight hotel "
    "dinner lunch coffee tea weather rain sun holiday family kids school doctor appointment gym run "
    "book movie music game weekend birthday party gift home office remote work time late early soon"
).split()

n = int(sys.argv[1])
rng = random.Random(20261202)
for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 40))]
    text = " ".join(words).capitalize() + rng.choice([".", "?", "!", ""])
    print(json.dumps(text))
