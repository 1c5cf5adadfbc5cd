"""Writes data/sample/reviews.jsonl: made-up product reviews and support
messages (names, places, numbers, typos and all) for the quickstart.

Every name, place, order number and phone number here is invented.
Run: python scripts/make_sample_data.py   (deterministic: fixed seed)
"""

import json
import random
from pathlib import Path

NAMES = ["Maria", "James", "Aisha", "Tom", "Priya", "Lukas", "Chen", "Sofia", "Omar", "Emily",
         "Daniel", "Hannah", "Kenji", "Fatima", "Lucas", "Olivia", "Mateo", "Grace", "Ivan", "Zoe"]
CITIES = ["Seattle", "Berlin", "Lagos", "Toronto", "Madrid", "Osaka", "Denver", "Dublin",
          "Melbourne", "Chicago", "Lisbon", "Nairobi", "Austin", "Vienna", "Boston"]
PRODUCTS = {
    "headphones": ["sound", "bass", "battery", "ear cushions", "noise cancelling"],
    "coffee maker": ["carafe", "filter", "brew strength", "timer", "water tank"],
    "running shoes": ["sole", "laces", "fit", "cushioning", "heel"],
    "phone case": ["grip", "corners", "buttons", "camera cutout", "color"],
    "desk lamp": ["brightness", "switch", "cable", "base", "dimmer"],
    "backpack": ["zipper", "straps", "laptop sleeve", "pockets", "fabric"],
}
PRAISE = ["great", "excellent", "solid", "comfortable", "reliable", "beautiful", "sturdy", "quiet"]
COMPLAINTS = ["broke", "stopped working", "cracked", "was missing", "felt cheap", "arrived damaged"]
REVIEW_TEMPLATES = [
    "I bought the {product} for my trip to {city} and the {part} is {praise}. Would buy again!",
    "The {part} {complaint} after {n} days. {name} from support was helpful but I'm still waiting for a refund.",
    "Honestly the best {product} I've owned. My sister {name} in {city} ordered two more.",
    "Not worth ${price}. The {part} {complaint} within a week and the {part2} is mediocre.",
    "Works as described. The {part} could be better, but for ${price} it's a fair deal.",
    "Ordered on {month} {day}, delivered to {city} {n} days late. Box was fine, the {part} {complaint}.",
    "{praise_cap} {product}! The {part} is {praise} and the {part2} is {praise2}. 5 stars from {name}.",
    "My husband {name} uses it every morning. The {part} is {praise}, no complaints so far.",
    "Returned it. The {part} {complaint} and customer service in {city} never called me back.",
    "Third {product} from this brand. Still {praise}, though the {part} changed since the {year} model.",
]
SUPPORT_TEMPLATES = [
    "Hi, this is {name}. My order #{order} hasn't arrived in {city} yet. Can you check? Call me at {phone}.",
    "Hello, I'm writing about order {order}: the {part} of my {product} {complaint}. I'd like a replacement.",
    "Please cancel order #{order}. I moved to {city} last week and won't be at the old address.",
    "{name} here again. I was charged twice (${price} each) for the {product}. Order #{order}.",
    "Can I change the delivery address for order {order} to {n} Main Street, {city}? Thanks, {name}",
    "The replacement {product} you sent also {complaint}. This is the second time. Order {order}.",
]
MONTHS = ["January", "March", "May", "July", "September", "November"]


def fill(template: str, rng: random.Random) -> tuple[str, str]:
    product = rng.choice(sorted(PRODUCTS))
    part, part2 = rng.sample(PRODUCTS[product], 2)
    praise, praise2 = rng.sample(PRAISE, 2)
    text = template.format(
        product=product, part=part, part2=part2, praise=praise, praise2=praise2,
        praise_cap=praise.capitalize(), complaint=rng.choice(COMPLAINTS), name=rng.choice(NAMES),
        city=rng.choice(CITIES), n=rng.randint(2, 21), price=rng.choice([19, 35, 49, 89, 129, 249]),
        month=rng.choice(MONTHS), day=rng.randint(1, 28), year=rng.randint(2015, 2025),
        order=rng.randint(100000, 999999), phone=f"555-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
    )
    return product, text


def main() -> None:
    rng = random.Random(20261123)
    rows = []
    for review_id in range(1, 301):
        support = rng.random() < 0.3
        product, text = fill(rng.choice(SUPPORT_TEMPLATES if support else REVIEW_TEMPLATES), rng)
        rows.append({
            "review_id": review_id,
            "ds": f"2026-11-{20 + review_id % 3:02d}",
            "kind": "support" if support else "review",
            "product": product,
            "rating": None if support else rng.randint(1, 5),
            "text": text,
            "keywords": [w.strip(".,!?#$").lower() for w in text.split()[:6] if w.strip(".,!?#$")],
        })
    rows[7]["text"] = None
    rows[8]["text"] = ""
    rows[9]["keywords"] = []
    rows[10]["text"] = "Café in Zürich: the naïve barista said «très bien» and handed me the wrong cup."
    out = Path(__file__).resolve().parent.parent / "data" / "sample" / "reviews.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
