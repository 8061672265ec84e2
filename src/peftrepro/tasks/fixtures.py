"""Tiny, deterministic datasets in exactly the layout and formats of a data root (peftrepro.tasks.data).

`write_fixtures(directory)` lets the smoke profile and every test run the real loaders without
the real data: a few dozen realistic examples per split, generated from templates with a fixed
seed (byte-identical on every call: gzip headers carry no timestamp).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path
from typing import Any, Iterable

SEED = 2021

# ----------------------------------------------------------------------------- E2E

NAMES = ["The Vaults", "Blue Spice", "Alimentum", "Cotto", "The Eagle", "Zizzi", "Aromi", "Fitzbillies",
         "The Punter", "Green Man", "Loch Fyne", "The Mill", "Strada", "Wildwood"]
EAT_TYPES = ["pub", "coffee shop", "restaurant"]
FOODS = ["English", "Italian", "Chinese", "French", "Japanese", "Indian", "Fast food"]
AREAS = ["city centre", "riverside"]
PRICES = ["cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"]
RATINGS = ["low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"]
NEAR = ["Café Brazil", "Raja Indian Cuisine", "The Portland Arms", "Burger King", "Crowne Plaza Hotel"]


def _e2e_mr(rng: random.Random) -> dict[str, str]:
    slots = {"name": rng.choice(NAMES), "eatType": rng.choice(EAT_TYPES), "food": rng.choice(FOODS),
             "priceRange": rng.choice(PRICES), "customer rating": rng.choice(RATINGS), "area": rng.choice(AREAS),
             "familyFriendly": rng.choice(["yes", "no"]), "near": rng.choice(NEAR)}
    optional = ["food", "priceRange", "customer rating", "area", "familyFriendly", "near"]
    dropped = set(rng.sample(optional, rng.randint(1, 4)))
    return {key: value for key, value in slots.items() if key not in dropped}


def _e2e_refs(slots: dict[str, str], rng: random.Random) -> list[str]:
    name, kind = slots["name"], slots["eatType"]
    details = []
    if "food" in slots:
        details.append(f"serves {slots['food']} food")
    if "priceRange" in slots:
        details.append(f"has a {slots['priceRange']} price range")
    if "customer rating" in slots:
        details.append(f"has a {slots['customer rating']} customer rating")
    if "familyFriendly" in slots:
        details.append("is family friendly" if slots["familyFriendly"] == "yes" else "is not family friendly")
    place = f" in the {slots['area']}" if "area" in slots else ""
    near = f" near {slots['near']}" if "near" in slots else ""
    joined = ", ".join(details[:-1]) + (" and " if len(details) > 1 else "") + (details[-1] if details else "")
    candidates = [
        f"{name} is a {kind}{place}{near}" + (f" that {joined}." if joined else "."),
        f"There is a {kind} called {name}{place}{near}" + (f". It {joined}." if joined else "."),
        f"Located{place or ' in town'}{near}, {name} is a {kind}" + (f" which {joined}." if joined else "."),
        f"{name}{near} is a {kind}" + (f". It {joined}" if joined else "") + f"{', located' + place if place else ''}.",
    ]
    return rng.sample(candidates, rng.randint(2, 4))


def _e2e_rows(n_mrs: int, rng: random.Random) -> list[dict[str, str]]:
    rows, seen = [], set()
    while len(seen) < n_mrs:
        slots = _e2e_mr(rng)
        mr = ", ".join(f"{key}[{value}]" for key, value in slots.items())
        if mr in seen:
            continue
        seen.add(mr)
        rows.extend({"mr": mr, "ref": ref} for ref in _e2e_refs(slots, rng))
    return rows


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerow(["mr", "ref"])
    writer.writerows([row["mr"], row["ref"]] for row in rows)
    _write_gz(path, buffer.getvalue())


# ----------------------------------------------------------------------------- WikiSQL

TABLES: list[dict[str, Any]] = [
    {"id": "1-10015132-16", "header": ["Player", "No.", "Nationality", "Position", "Years in Toronto", "School/Club Team"],
     "types": ["text", "real", "text", "text", "text", "text"],
     "rows": [["Aleksandar Radojević", "25", "Serbia", "Center", "1999-2000", "Barton CC (KS)"],
              ["Shawn Respert", "31", "United States", "Guard", "1997-98", "Michigan State"],
              ["Jalen Rose", "5", "United States", "Guard-Forward", "2003-06", "Michigan"],
              ["Terrence Ross", "31", "United States", "Guard", "2012-present", "Washington"],
              ["Jermaine O'Neal", "7", "United States", "Center", "2008-09", "Eau Claire High School"]]},
    {"id": "1-10083598-1", "header": ["No", "Date", "Round", "Circuit", "Pole Position", "Race winner"],
     "types": ["real", "text", "text", "text", "text", "text"],
     "rows": [["1", "26 March", "Round 1", "Phillip Island", "Troy Corser", "Troy Bayliss"],
              ["2", "9 April", "Round 2", "Donington Park", "Kevin Curtain", "James Toseland"],
              ["3", "23 April", "Round 3", "Valencia", "Troy Corser", "Troy Corser"],
              ["4", "7 May", "Round 4", "Monza", "Troy Bayliss", "Troy Bayliss"]]},
    {"id": "2-15162503-1", "header": ["Task No.", "Task", "Options", "Viewers' selection", "Result"],
     "types": ["real", "text", "text", "text", "text"],
     "rows": [["1", "Baking", "Cake or pie", "Cake", "completed"],
              ["2", "Singing", "Opera or pop", "Pop", "failed"],
              ["3", "Diving", "Pool or sea", "Sea", "completed"],
              ["4", "Running", "Track or road", "Road", "completed"]]},
    {"id": "1-105344-2", "header": ["Year", "Aircraft kilometers", "Departures", "Flying hours", "Passengers"],
     "types": ["real", "real", "real", "real", "real"],
     "rows": [["2000", "64379058", "17096", "92524", "1124234"],
              ["2001", "60312434", "16230", "87021", "1055672"],
              ["2002", "58101220", "15877", "83012", "998541"],
              ["2006", "70203111", "18350", "99876", "1311222"]]},
    {"id": "2-11111111-2", "header": ["Club", "City", "Stadium", "Capacity", "Manager's name"],
     "types": ["text", "text", "text", "real", "text"],
     "rows": [["Bursaspor", "Bursa", "Timsah Arena", "43331", "Ertuğrul Sağlam"],
              ["Spartak Moscow", "Moscow", "Otkrytie Arena", "45360", "Valery Karpin"],
              ["Celtic", "Glasgow", "Celtic Park", "60411", "Neil Lennon"],
              ["Porto", "Porto", "Estádio do Dragão", "50033", "André Villas-Boas"]],
     "ambiguous_rows": [1], "raw_ambiguous_lines": {"1": "Spartak Moscow,Moscow,Otkrytie Arena,45,360,Valery Karpin"}},
    {"id": "1-1013129-2", "header": ["Pick", "Player", "Position", "Nationality", "NHL team"],
     "types": ["real", "text", "text", "text", "text"],
     "rows": [["27", "Rhett Warrener", "Defence", "Canada", "Florida Panthers"],
              ["28", "Johan Finnstrom", "Defence", "Sweden", "Calgary Flames"],
              ["29", "Nick Naumenko", "Defence", "United States", "Chicago Blackhawks"],
              ["30", "Radim Bicanek", "Defence", "Czech Republic", "Ottawa Senators"],
              ["31", "Ryan Risidore", "Defence", "Canada", "Hartford Whalers"]]},
    {"id": "2-12345678-3", "header": ["Title", "Directed by", "Original air date", "Viewers (millions)"],
     "types": ["text", "text", "text", "real"],
     "rows": [['"Poppin\' Tags"', "Bob Smith", "March 3, 2011", "4.2"],
              ['"The Pilot"', "Ann Lee", "January 6, 2011", "5.1"],
              ['"Homecoming"', "Bob Smith", "February 10, 2011", "3.9"]]},
    {"id": "1-99999-1", "header": ["Rank", "Country", "Gold", "Silver", "Bronze", "Total"],
     "types": ["real", "text", "real", "real", "real", "real"],
     "rows": [["1", "Norway", "14", "14", "11", "39"], ["2", "Germany", "14", "10", "7", "31"],
              ["3", "Canada", "11", "8", "10", "29"], ["4", "United States", "9", "8", "6", "23"]]},
]

_QUESTION_TEMPLATES = [  # (question template, agg, uses condition)
    ("What is the {sel} when the {cond} is {val}?", 0),
    ("Which {sel} has a {cond} of {val}?", 0),
    ("How many {sel} are listed when {cond} is {val}?", 3),
    ("What is the highest {sel} with a {cond} of {val}?", 1),
    ("What is the lowest {sel} for {cond} {val}?", 2),
]


def _wikisql_questions(rng: random.Random, per_table: int) -> list[dict[str, Any]]:
    questions = []
    for table in TABLES:
        header, rows = table["header"], table["rows"]
        for _ in range(per_table):
            template, agg = rng.choice(_QUESTION_TEMPLATES)
            sel, cond_col = rng.sample(range(len(header)), 2)
            if agg in (1, 2) and table["types"][sel] != "real":
                agg = 0
            value: Any = rng.choice(rows)[cond_col]
            if table["types"][cond_col] == "real":
                value = int(value) if value.isdigit() else float(value)
            op = 0 if table["types"][cond_col] == "text" else rng.choice([0, 0, 1, 2])
            conds = [[cond_col, op, value]]
            if rng.random() < 0.25:  # some two-condition queries
                extra = next(c for c in range(len(header)) if c not in (sel, cond_col))
                conds.append([extra, 0, rng.choice(rows)[extra]])
            question = template.format(sel=header[sel].lower(), cond=header[cond_col].lower(), val=value)
            questions.append({"phase": 1, "table_id": table["id"], "question": question,
                              "sql": {"sel": sel, "conds": conds, "agg": agg}})
    questions.append({"phase": 1, "table_id": "1-99999-1", "question": "What is the lowest total?",
                      "sql": {"sel": 5, "conds": [], "agg": 2}})
    return questions


# ----------------------------------------------------------------------------- MNLI

_NLI_FACTS = [
    ("The museum on Elm Street opens at nine every morning", "The museum opens in the morning",
     "The museum is popular with tourists", "The museum never opens before noon"),
    ("Maria drove her old truck to the farmers' market on Saturday", "Maria went to the market",
     "Maria bought fresh tomatoes at the market", "Maria stayed at home all weekend"),
    ("The committee approved the new budget after a long debate", "The budget was approved",
     "Some members of the committee disliked the budget", "The committee rejected the budget"),
    ("yeah we had a lot of rain this spring so the garden did great", "The garden did well this spring",
     "They grow vegetables in the garden", "The garden died because of the drought"),
    ("The train to Boston was delayed by forty minutes because of snow", "The train was late",
     "Many passengers missed their meetings", "The train arrived early"),
    ("Our hearts are heavy this year as we look back at those we've lost", "This year has been sad",
     "They lost more people this year than last year", "Nobody was lost this year"),
    ("The report was written by two economists at the central bank", "Economists wrote the report",
     "The report predicts a recession", "The report was written by a single journalist"),
    ("He fixed the leaking roof before the winter storms arrived", "The roof was repaired",
     "The repair was expensive", "The roof was still leaking during the storms"),
]


TRAIN_PREFIXES = ("", "In fact, ", "Apparently, ")
# validation premises open differently, so that no validation pair is a training pair (as in the real data)
VALIDATION_PREFIXES = ("Reportedly, ", "Indeed, ", "Clearly, ")


def _mnli_records(rng: random.Random, n: int, offset: int, prefixes=TRAIN_PREFIXES) -> list[dict[str, Any]]:
    labels = ("entailment", "neutral", "contradiction")
    records = []
    for i in range(n):
        premise, *hypotheses = _NLI_FACTS[(i + offset) % len(_NLI_FACTS)]
        label = (i + offset // len(_NLI_FACTS)) % 3
        prefix = rng.choice(prefixes)
        records.append({"premise": prefix + premise + ".", "hypothesis": hypotheses[label] + ".",
                        "label": label, "label_text": labels[label]})
    return records


# ----------------------------------------------------------------------------- writing


def _write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle:
        handle.write(text.encode("utf-8"))


def _write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    _write_gz(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


def write_fixtures(directory: str | Path) -> Path:
    """Write the fixture data root under `directory` and return it (usable as PEFTREPRO_DATA_ROOT)."""
    root = Path(directory)
    rng = random.Random(SEED)
    for split, n_mrs in (("train", 14), ("dev", 6), ("test", 8)):
        _write_csv(root / "e2e" / f"{split}.csv.gz", _e2e_rows(n_mrs, rng))

    questions = _wikisql_questions(rng, per_table=6)
    _write_jsonl(root / "wikisql" / "test.jsonl.gz", questions)
    _write_jsonl(root / "wikisql" / "test.tables.jsonl.gz",
                 [{"ambiguous_rows": [], **table} for table in TABLES])
    dev = [{**q, "table_id": q["table_id"].replace("-", "-7", 1)} for q in _wikisql_questions(rng, per_table=2)]
    _write_jsonl(root / "wikisql" / "dev.jsonl.gz", dev)  # dev tables are absent, as in the real copy

    train = _mnli_records(rng, 36, 0)
    _write_jsonl(root / "mnli" / "train_subset.jsonl.gz",
                 [{**r, "source_file": "fixture", "source_key": i} for i, r in enumerate(train)])
    for split, offset in (("validation_matched", 100), ("validation_mismatched", 200)):
        _write_jsonl(root / "mnli" / f"{split}.jsonl.gz",
                     [{"idx": i, **r} for i, r in enumerate(_mnli_records(rng, 24, offset, VALIDATION_PREFIXES))])
    return root
