"""Writes train.jsonl / validation.jsonl: a small 3-topic data set (sport, cooking, weather) in JSON lines,
fields `text` and `label` (string labels), from templates with a fixed seed. `python examples/topics/make_topics.py`."""

import json
import random
from pathlib import Path

WORDS = {
    "sport": ["the striker scored twice", "the team won the final", "a late goal decided the match",
              "the coach praised the defence", "the runner broke the record", "fans cheered the home side"],
    "cooking": ["simmer the sauce for ten minutes", "the recipe needs fresh basil", "bake the bread until golden",
                "chop the onions finely", "the soup tastes of garlic", "season the roast with salt"],
    "weather": ["heavy rain is expected tonight", "the forecast says sunny skies", "strong winds hit the coast",
                "snow will fall in the hills", "a warm front brings clouds", "temperatures drop below zero"],
}
OPENERS = ["", "today ", "reports say ", "as usual ", "once again ", "this morning "]
CLOSERS = ["", " again", " this week", " they said", " for sure", " as expected"]


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    labels = sorted(WORDS)
    return [
        {"text": rng.choice(OPENERS) + rng.choice(WORDS[labels[i % 3]]) + rng.choice(CLOSERS), "label": labels[i % 3]}
        for i in range(n)
    ]


if __name__ == "__main__":
    here = Path(__file__).parent
    for split, n, seed in (("train", 240, 1), ("validation", 60, 2)):
        with open(here / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows(n, seed))
