"""Write the OCR (text rendering) prompt sets ocr-train.txt and ocr-test.txt next to this file.

Each prompt is a scene template with one text to render in double quotes, e.g.
``A neon sign on a brick wall that says "OPEN 24 HOURS"``. The texts of the two splits are
disjoint (the test split measures text the policy never trained on); templates are shared.
Deterministic: the same files come out on every run (a fixed seed, no dependencies).

    python src/tempflow/assets/prompts/make_ocr_prompts.py          # rewrite both files
    python src/tempflow/assets/prompts/make_ocr_prompts.py --check  # exit 1 if they differ
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

TEMPLATES = [
    'A neon sign on a brick wall that says "{}"',
    'A wooden sign in a forest that reads "{}"',
    'A storefront with a large banner saying "{}"',
    'A chalkboard menu outside a cafe with the words "{}"',
    'A vintage travel poster with the title "{}"',
    'A coffee mug printed with the text "{}"',
    'A T-shirt on a hanger with "{}" printed across the chest',
    'A road sign on a highway that says "{}"',
    'A birthday cake with "{}" written in icing',
    'A book cover with the title "{}" in bold letters',
    'A handwritten note on a desk that says "{}"',
    'A protest placard held up in a crowd reading "{}"',
    'A movie theater marquee showing "{}"',
    'A license plate that reads "{}"',
    'A graffiti mural on a concrete wall spelling "{}"',
    'A street sign at a corner that says "{}"',
    'A paper bag from a bakery stamped with "{}"',
    'A glowing computer screen displaying the words "{}"',
    'A sticky note on a fridge that says "{}"',
    'A hot air balloon with "{}" painted on it',
]

TRAIN_TEXTS = [
    "OPEN 24 HOURS", "Hello World", "FRESH BREAD", "No Parking", "SALE", "Welcome Home",
    "Good Morning", "EXIT", "STOP", "Happy Birthday", "Keep Calm", "Free WiFi", "Coffee Time",
    "BEST PIZZA", "Live Music Tonight", "CLOSED", "Think Different", "Summer Vibes", "GAME OVER",
    "Dream Big", "Hot Dogs", "ICE COLD DRINKS", "Lost and Found", "Fast Lane", "Danger",
    "Bike Lane", "Made with Love", "Save the Planet", "Back Soon", "Under Construction",
    "PHARMACY", "Bookstore", "Night Market", "Sea View", "FOR RENT", "Pet Friendly",
    "Stay Curious", "Do Not Disturb", "Fresh Fruit", "Vote Today", "Go Green", "TAXI",
    "Public Library", "Pizza Party", "Slow Down", "Garden Center", "Hello Kitty", "Big Sale",
    "Love Wins", "Be Kind", "Jazz Club", "Fish Market", "Mountain Lodge", "CAUTION",
    "Ticket Office", "Sunset Beach", "Bus Stop", "Green Tea", "Wet Paint", "ONE WAY",
    "Flower Shop", "Hotel California", "Little Italy", "Main Street", "Gold Rush",
    "Space Station", "Moon Base", "Robot Factory", "Ocean Drive", "Car Wash", "Lemonade",
    "Tacos", "Bakery", "Art Gallery", "Cinema", "Museum", "Station 7", "Route 66", "Room 404",
    "Gate B12", "Platform 9", "Year 2049", "Apollo 11", "Level 3", "Aisle 5", "Exit 42",
    "Open Late", "Made in Italy", "Happy New Year", "Merry Christmas", "Game Night",
    "Team Spirit", "Stay Hydrated", "Learn Python", "Hello Mars", "Deep Learning",
    "Flow Matching", "Make Art", "Winter Is Coming", "Carpe Diem",
]

TEST_TEXTS = [
    "OPEN NOW", "Good Night", "Thank You", "Fresh Coffee", "Rock Band", "NO ENTRY", "Home Sweet Home",
    "Snack Bar", "City Hall", "Train Station", "Pop Corn", "Wild West", "Blue Moon", "Hair Salon",
    "Fire Exit", "Sushi Bar", "Grand Opening", "Zoo Entrance", "Farm Eggs", "Tea Room",
    "Gate 21", "Room 101", "Track 4", "Bay 9", "Dock 12",
]

SEED = 20240501
N_TRAIN, N_TEST = 200, 50
HERE = Path(__file__).resolve().parent


def make(texts: list[str], n: int, rng: random.Random) -> list[str]:
    """n distinct prompts: every text in turn (shuffled), each with a random template."""
    if n > len(texts) * len(TEMPLATES):
        raise ValueError(f"cannot make {n} distinct prompts from {len(texts)} texts")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        order = texts[:]
        rng.shuffle(order)
        for text in order:
            if len(out) == n:
                break
            prompt = rng.choice(TEMPLATES).format(text)
            while prompt in seen:
                prompt = rng.choice(TEMPLATES).format(text)
            seen.add(prompt)
            out.append(prompt)
    return out


def files() -> dict[str, str]:
    if set(TRAIN_TEXTS) & set(TEST_TEXTS):
        raise ValueError(f"texts in both splits: {sorted(set(TRAIN_TEXTS) & set(TEST_TEXTS))}")
    rng = random.Random(SEED)
    train = make(TRAIN_TEXTS, N_TRAIN, rng)
    test = make(TEST_TEXTS, N_TEST, rng)
    return {"ocr-train.txt": "\n".join(train) + "\n", "ocr-test.txt": "\n".join(test) + "\n"}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, text in files().items():
        path = HERE / name
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} prompts)")
    if stale:
        print(f"out of date: {', '.join(stale)} (run {Path(__file__).name} to rewrite)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
