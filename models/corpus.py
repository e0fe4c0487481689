"""A synthetic labelled news-like corpus for demos and tests, and readers/writers for labelled files.

`generate_demo_corpus` builds sentences from per-topic subjects, actions and objects, generic
framings and clauses. To keep it from being trivially separable: some sentences borrow a detail
from another topic; one in ten takes its object from a neighbouring topic (sports/health,
technology/finance, travel/food); some are vague announcements whose subject is the only cue,
and half of those lack even that; a few subjects belong to two topics. A good classifier lands
around 90-95%, not 100%.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import fsspec

from models.errors import SchemaError

__all__ = ["TOPICS", "generate_demo_corpus", "load_labelled", "write_corpus"]

_VOCAB: dict[str, dict[str, list[str]]] = {
    "sports": {
        "subj": ["the striker", "the home team", "the veteran goalkeeper", "the young sprinter", "the head coach",
                 "the tennis champion", "the rugby captain", "the visiting side", "the club", "the cyclist",
                 "the point guard", "the team", "the marathon runner", "the boxer", "the midfielder"],
        "act": ["scored", "missed", "celebrated", "lost", "won", "defended", "appealed", "clinched", "dominated",
                "conceded", "secured", "trained for", "withdrew from", "prepared for", "reached"],
        "obj": ["a late winner in the derby", "the championship final", "a penalty in extra time",
                "the opening match of the season", "a record lap at the velodrome", "the semi-final on home soil",
                "a hat-trick against the league leaders", "the title race", "a two-goal lead at half time",
                "the world cup qualifier", "a tough away fixture", "the relegation battle", "an olympic medal",
                "the grand slam quarter-final", "a fifth straight victory"],
        "detail": ["in front of a sold-out stadium", "after a tense second half", "with ten men on the pitch",
                   "as the crowd chanted his name", "before the transfer window closed", "despite a hamstring injury",
                   "under the floodlights", "in the final minute of stoppage time"],
    },
    "technology": {
        "subj": ["the chip maker", "the software company", "a team of engineers", "the startup", "the smartphone maker",
                 "the open source project", "the cloud provider", "a security researcher", "the robotics lab",
                 "researchers", "the browser team", "the social network", "the game studio", "the hardware vendor",
                 "the AI lab"],
        "act": ["released", "patched", "unveiled", "open-sourced", "shipped", "benchmarked", "rewrote", "delayed",
                "demonstrated", "announced", "tested", "deprecated", "upgraded", "debugged", "launched"],
        "obj": ["a faster processor with better battery life", "a critical vulnerability in the kernel",
                "a new programming language", "an update to its operating system", "a large language model",
                "the database engine", "a foldable phone", "its compiler toolchain", "a quantum computing prototype",
                "a cheaper data centre design", "the encryption library", "a self-driving software stack",
                "a new graphics card", "the mobile app", "its machine learning framework"],
        "detail": ["for developers worldwide", "after months of beta testing", "with support for more languages",
                   "on its annual developer conference", "to reduce latency in the cloud",
                   "after a bug report went viral", "with better privacy controls", "running entirely on device"],
    },
    "finance": {
        "subj": ["the central bank", "investors", "the hedge fund", "the pension fund", "the treasury",
                 "the bank", "analysts", "the stock exchange", "bond traders", "the startup",
                 "the company", "the asset manager", "shareholders", "the regulator", "the mortgage lender"],
        "act": ["raised", "cut", "reported", "forecast", "sold", "bought", "downgraded", "hedged", "priced",
                "approved", "questioned", "rejected", "tripled", "acquired", "audited"],
        "obj": ["interest rates by a quarter point", "quarterly earnings that beat forecasts", "a bond issue",
                "its stake in the retailer", "the dividend for shareholders", "a merger worth billions",
                "inflation expectations for next year", "the initial public offering", "a credit rating",
                "its exposure to commercial property", "the currency reserves", "the annual budget deficit",
                "a share buyback programme", "the mortgage rates", "its profit outlook"],
        "detail": ["as markets closed lower", "ahead of the earnings call", "while the yield curve inverted",
                   "amid fears of a recession", "after the stock jumped eight percent",
                   "as the dollar weakened", "according to a regulatory filing", "before the trading session opened"],
    },
    "health": {
        "subj": ["the hospital", "doctors", "a team of nurses", "the health ministry", "researchers",
                 "the clinic", "the surgeon", "public health officials", "the pharmacist", "the patients",
                 "the physiotherapist", "the vaccine maker", "a nutritionist", "the medical school", "the cardiologist"],
        "act": ["warned about", "treated", "studied", "recommended", "approved", "tracked", "reported",
                "screened for", "reduced", "prescribed", "investigated", "published", "vaccinated against",
                "tested", "monitored"],
        "obj": ["rising cases of seasonal flu", "a new cancer therapy", "the results of a vaccine trial",
                "better sleep habits for teenagers", "a shortage of antibiotics", "the spread of measles",
                "blood pressure in older adults", "a rare genetic disorder", "waiting times in emergency rooms",
                "the risks of smoking", "a treatment for chronic back pain", "symptoms of long covid",
                "mental health support for students", "the benefits of regular exercise", "type two diabetes"],
        "detail": ["in a peer-reviewed study", "during the winter season", "after a clinical trial",
                   "in rural communities", "for patients over sixty", "according to the world health organization",
                   "with fewer side effects", "in a large randomised trial"],
    },
    "travel": {
        "subj": ["the airline", "tourists", "the small hotel", "the cruise operator", "the company",
                 "the tourism board", "the travel agency", "the national park", "the airport", "the railway company",
                 "a group of hikers", "the resort", "the ferry service", "holidaymakers", "the guidebook"],
        "act": ["booked", "cancelled", "explored", "recommended", "reopened", "added", "reviewed", "visited",
                "delayed", "promoted", "discovered", "rerouted", "expanded", "toured", "suspended"],
        "obj": ["cheap flights to Lisbon this summer", "a scenic train route through the Alps",
                "the old town and its castle", "a beach resort on the island", "new routes to Asia",
                "a hiking trail along the coast", "the visa rules for visitors", "a weekend in Kyoto",
                "the night train to Vienna", "a guided tour of the ancient ruins", "the ski season",
                "a cruise around the fjords", "a road trip across the desert", "the boutique hotels",
                "the passport queues"],
        "detail": ["during the peak holiday season", "for travellers on a budget", "with a stunning sea view",
                   "after the storm passed", "before the border reopened", "as bookings surged",
                   "despite long security lines", "with free cancellation"],
    },
    "food": {
        "subj": ["the chef", "the bakery", "the restaurant", "a food critic", "the street vendor",
                 "the cafe", "home cooks", "the winery", "the pastry chef", "the brewery",
                 "the farmers market", "the sushi bar", "the food truck", "the cookbook author", "the pizzeria"],
        "act": ["served", "baked", "cooked", "praised", "created", "tasted", "grilled", "reinvented", "roasted",
                "paired", "perfected", "fermented", "seasoned", "plated", "sampled"],
        "obj": ["a spicy ramen with fresh noodles", "sourdough bread with a crisp crust", "a vegan tasting menu",
                "the best tacos in town", "a rich chocolate dessert", "grilled fish with lemon butter",
                "a seasonal salad of tomatoes", "a slow-cooked lamb stew", "the house red wine",
                "a new craft beer", "handmade pasta with truffles", "the classic margherita pizza",
                "a creamy mushroom risotto", "crispy fried chicken", "a traditional apple pie"],
        "detail": ["with local ingredients", "for a packed dining room", "using a family recipe",
                   "at the weekend food festival", "with a hint of smoked paprika", "in a wood-fired oven",
                   "to rave reviews", "for the new autumn menu"],
    },
}

TOPICS: tuple[str, ...] = tuple(_VOCAB)

_LEADS = ["On Monday", "Late last night", "Earlier this week", "According to local reports", "For the first time",
          "In a surprise move", "After weeks of speculation", "As expected", "In a statement", "Over the weekend"]
_CLAUSES = ["which surprised many observers", "and the reaction online was mixed", "according to people familiar with it",
            "though critics remained unconvinced", "for the second time this year", "as the weather stayed mild",
            "while the city prepared for the holidays", "and more details are expected soon"]
_TEMPLATES = [
    "{Subj} {act} {obj}.",
    "{Subj} {act} {obj} {detail}.",
    "{lead}, {subj} {act} {obj}.",
    "{lead}, {subj} {act} {obj} {detail}.",
    "{Subj} {act} {obj}, {clause}.",
    "{lead}, {subj} {act} {obj} {detail}, {clause}.",
    "Reports say {subj} {act} {obj} {detail}.",
    "It was a big day: {subj} {act} {obj}.",
]
_GENERIC_ACTS = ["announced", "confirmed", "postponed", "discussed", "denied", "welcomed"]
_GENERIC_OBJS = ["plans for next year", "a new partnership", "changes to the schedule", "a major reorganisation",
                 "the rumours", "a review of its strategy", "a new director", "the decision"]
_GENERIC_SUBJS = ["officials", "the organisers", "a spokesperson", "the new owner", "the board"]
_NEIGHBOUR = {"sports": "health", "health": "sports", "technology": "finance", "finance": "technology",
              "travel": "food", "food": "travel"}
_CROSS_DETAIL_RATE = 0.18
_NEIGHBOUR_OBJ_RATE = 0.10
_GENERIC_RATE = 0.08


def generate_demo_corpus(n: int = 4000, seed: int = 0) -> list[dict]:
    """`n` unique labelled sentences ({"text", "label"}), balanced over TOPICS, deterministic by seed."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict] = []
    for i in range(n):
        label = TOPICS[i % len(TOPICS)]
        for _ in range(200):
            text = _sentence(rng, label)
            if text not in seen:
                break
        else:
            raise ValueError(f"cannot make {n} unique sentences; ask for fewer")
        seen.add(text)
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def _sentence(rng: random.Random, label: str) -> str:
    vocab = _VOCAB[label]
    detail_topic = label
    if rng.random() < _CROSS_DETAIL_RATE:
        detail_topic = rng.choice([t for t in TOPICS if t != label])
    act, obj = rng.choice(vocab["act"]), rng.choice(vocab["obj"])
    roll = rng.random()
    if roll < _NEIGHBOUR_OBJ_RATE:
        obj = rng.choice(_VOCAB[_NEIGHBOUR[label]]["obj"])
    subj = rng.choice(vocab["subj"])
    if _NEIGHBOUR_OBJ_RATE <= roll < _NEIGHBOUR_OBJ_RATE + _GENERIC_RATE:
        act, obj = rng.choice(_GENERIC_ACTS), rng.choice(_GENERIC_OBJS)
        if rng.random() < 0.5:
            # Nothing topical left but the optional detail: close to a coin toss for any model.
            subj = rng.choice(_GENERIC_SUBJS)
    parts = {
        "subj": subj,
        "Subj": subj[0].upper() + subj[1:],
        "act": act,
        "obj": obj,
        "detail": rng.choice(_VOCAB[detail_topic]["detail"]),
        "lead": rng.choice(_LEADS),
        "clause": rng.choice(_CLAUSES),
    }
    text = rng.choice(_TEMPLATES).format(**parts)
    words = len(text.split())
    if words < 8:
        text = f"{text[:-1]} {parts['detail']}."
    elif words > 30:
        text = "{Subj} {act} {obj} {detail}.".format(**parts)
    return text


def write_corpus(path: str | Path, rows: list[dict]) -> Path:
    """Write rows to .csv, .jsonl or .parquet (chosen by suffix); columns are the first row's keys."""
    path = Path(path)
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0]) if rows else ["text", "label"]
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows) if rows else pa.table({c: pa.array([], pa.string()) for c in columns})
        pq.write_table(table, path)
    return path


def load_labelled(path: str | Path, text_col: str = "text", label_col: str = "label") -> list[dict]:
    """Read a labelled CSV, Parquet or JSONL file (path or fsspec URI) as [{"text", "label"}, ...]."""
    suffix = _suffix(path)
    with fsspec.open(str(path), "rb") as f:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(f)
            columns = table.column_names
            records = table.to_pylist()
        elif suffix == ".csv":
            reader = csv.DictReader(f.read().decode("utf-8-sig").splitlines())
            columns = list(reader.fieldnames or [])
            records = list(reader)
        else:
            records = [json.loads(line) for line in f.read().decode("utf-8").splitlines() if line.strip()]
            columns = sorted({k for r in records for k in r})
    missing = [c for c in (text_col, label_col) if c not in columns]
    if missing:
        raise SchemaError(
            f"{path} has no column(s) {', '.join(map(repr, missing))}; its columns are {columns}. "
            "Pass text_col=/label_col= to name the right ones."
        )
    rows = []
    for i, rec in enumerate(records):
        text, label = rec.get(text_col), rec.get(label_col)
        if text is None or label is None or not str(text).strip() or str(label) == "":
            raise SchemaError(f"{path}: row {i} has an empty {text_col!r} or {label_col!r}")
        rows.append({"text": str(text), "label": str(label)})
    return rows


def _suffix(path: str | Path) -> str:
    suffix = Path(str(path)).suffix.lower()
    if suffix not in (".csv", ".jsonl", ".parquet"):
        raise ValueError(f"unsupported file type {suffix or '(none)'!r} for {path}; use .csv, .jsonl or .parquet")
    return suffix
