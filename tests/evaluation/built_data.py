"""Evaluation data written in code, shaped like the real data sets of the assets folder (`../shared/assets`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "the of and in to a was is for on as by with from at his that it an were which are this also be has had first "
    "one two new game season film album song river city station year world war team music record series"
).split()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def wiki_rows(count: int, seed: int = 0) -> list[str]:
    """Rows shaped like the WikiText-2 raw rows: empty rows, ` = Heading = ` rows and paragraphs with WikiText's
    ` @-@ ` / ` @,@ ` tokens, each non-empty row ending in ` \\n`."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        if index % 4 == 0:
            rows.append("")
        elif index % 8 == 1:
            rows.append(f" = {' '.join(rng.choice(WORDS) for _ in range(3)).title()} = \n")
        else:
            sentences = []
            for _ in range(rng.randint(2, 4)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(6, 14))]
                words.insert(rng.randrange(len(words)), rng.choice(["@-@", "@,@", str(rng.randint(1900, 2015))]))
                sentences.append(" ".join(words).capitalize() + " .")
            rows.append(" " + " ".join(sentences) + " \n")
    return rows


def ptb_lines(count: int, seed: int = 0) -> list[str]:
    """Lines shaped like Mikolov's PTB test file: a leading space, lower-case words, `<unk>` and `N` tokens."""
    rng = random.Random(seed)
    return [" " + " ".join(rng.choice([*WORDS, "<unk>", "N"]) for _ in range(rng.randint(8, 20))) + " " for _ in
            range(count)]


# Zero-shot items in the layout and formats of the assets folder (see `optimum_multipruner/evaluation/tasks/utils.py`)
PIQA = [
    ({"goal": "How do I dry wet shoes?", "sol1": "Stuff them with newspaper overnight.",
      "sol2": "Stuff them with ice overnight."}, 0),
    ({"goal": "To keep bread fresh longer,", "sol1": "leave it open on the counter.",
      "sol2": "store it in a sealed bag."}, 1),
    ({"goal": "lamp", "sol1": "can light a room ", "sol2": "can  eat a room "}, 0),
    ({"goal": "How can I open a stuck jar lid?", "sol1": "Tap the lid on the counter, then twist.",
      "sol2": "Put the jar in the freezer, then shake it."}, 0),
    ({"goal": "To clean a cast iron pan,", "sol1": "soak it in water for a week.",
      "sol2": "scrub it with salt and wipe it with oil."}, 1),
    ({"goal": "Make a paper boat float longer.", "sol1": "Rub candle wax over the paper first.",
      "sol2": "Wet the paper first."}, 0),
]
WINOGRANDE = [  # the first two are the first items of the WinoGrande xl dev set (the Hub records are in the tests)
    {"context_options": ["Sarah was a much better surgeon than Maria so Sarah",
                         "Sarah was a much better surgeon than Maria so Maria"],
     "continuation": "always got the easier cases.", "gold": 1},
    {"context_options": ["Sarah was a much better surgeon than Maria so Sarah",
                         "Sarah was a much better surgeon than Maria so Maria"],
     "continuation": "always got the harder cases.", "gold": 0},
    {"context_options": ["The cup did not fit in the bag because the cup",
                         "The cup did not fit in the bag because the bag"],
     "continuation": "was too big.", "gold": 0},
    {"context_options": ["Tom lent Ben money because Tom", "Tom lent Ben money because Ben"],
     "continuation": "was short of cash that week.", "gold": 1},
    {"context_options": ["The river flooded the town since the river", "The river flooded the town since the town"],
     "continuation": "rose after the storm.", "gold": 0},
]
HELLASWAG = [
    {"ind": 1, "activity_label": "Making tea", "ctx_a": "A man fills a kettle with water.", "ctx_b": "he",
     "label": 2, "endings": ["throws the kettle away.", "paints the kettle.", "puts the kettle on the stove.",
                             "sings to the kettle."]},
    {"ind": 2, "activity_label": "Home and Garden", "ctx_a": "[header] How to water plants [title] Check the soil.",
     "ctx_b": "", "label": 0, "endings": ["[step] Water only when the top inch is dry.", "Eat the soil.",
                                          "[title] Paint the pot.", "Sell the plant."]},
    {"ind": 3, "activity_label": "Running", "ctx_a": "A woman ties her shoes at the track.", "ctx_b": "she",
     "label": 1, "endings": ["flies away.", "starts to jog around the track.", "reads a book on the track.",
                             "takes off her shoes again."]},
    {"ind": 4, "activity_label": "Cooking", "ctx_a": "Eggs are cracked into a bowl.", "ctx_b": "the cook",
     "label": 3, "endings": ["drinks the eggs.", "throws the bowl.", "sleeps.", "whisks the eggs with a fork."]},
    {"ind": 5, "activity_label": "Swimming", "ctx_a": "Children jump into a pool.", "ctx_b": "they",
     "label": 0, "endings": ["swim to the other side.", "climb a tree.", "drive a car.", "bake bread."]},
]
ARC = {
    "arc_easy": [
        {"query": "Question: Which of these is a source of light?", "choices": ["the Sun", "a rock", "a shadow"],
         "gold": 0},
        {"query": "Question: What do plants need to make food?",
         "choices": ["sand", "sunlight", "darkness", "plastic"], "gold": 1},
        {"query": "Question: Which tool measures temperature?",
         "choices": ["a ruler", "a scale", "a thermometer", "a compass"], "gold": 2},
        {"query": "Question: What state of matter is ice?", "choices": ["gas", "liquid", "plasma", "solid"],
         "gold": 3},
        {"query": "Question: Which animal lays eggs?", "choices": ["a cow", "a hen", "a dog", "a cat", "a horse"],
         "gold": 1},
    ],
    "arc_challenge": [
        {"query": "Question: Why does a metal spoon feel colder than a wooden spoon at the same temperature?",
         "choices": ["Metal conducts heat away from the hand faster.", "Wood is always warmer.",
                     "Metal has no heat.", "Wood reflects cold."], "gold": 0},
        {"query": "Question: Which change is chemical?",
         "choices": ["melting ice", "cutting paper", "burning wood", "boiling water"], "gold": 2},
        {"query": "Question: What mostly causes the seasons on Earth?",
         "choices": ["distance to the Sun", "the tilt of Earth's axis", "the Moon"], "gold": 1},
        {"query": "Question: Which process moves water from leaves to the air?",
         "choices": ["condensation", "precipitation", "transpiration", "erosion"], "gold": 2},
        {"query": "Question: A ball rolls to a stop on grass because of which force?",
         "choices": ["magnetism", "gravity pulling it up", "friction", "buoyancy"], "gold": 2},
    ],
}


def write_task_data(root: Path) -> Path:
    """The five zero-shot tasks' files under `root`, laid out as in the assets folder."""
    write_jsonl(root / "piqa" / "valid.jsonl", [item for item, _ in PIQA])
    (root / "piqa" / "valid-labels.lst").write_text("".join(f"{label}\n" for _, label in PIQA), encoding="utf-8")
    write_jsonl(root / "llm-foundry-icl" / "winogrande.jsonl", WINOGRANDE)
    write_jsonl(root / "hellaswag" / "hellaswag_val_subset1000.jsonl",
                [{**row, "ctx": f"{row['ctx_a']} {row['ctx_b']}".strip(), "split": "val"} for row in HELLASWAG])
    for task, rows in ARC.items():
        write_jsonl(root / "llm-foundry-icl" / f"{task}.jsonl", rows)
    return root
