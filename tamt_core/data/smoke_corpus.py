"""A tiny, generated stand-in for WikiText-103 (raw), so that everything runs offline.

**This is a smoke default, not a benchmark.** The paper pre-trains and evaluates on WikiText-103 (paper §4.1.2;
reference-impl §4.6, §6.2). That corpus cannot be downloaded on machines without hub access, so the pipeline's
default data source is this corpus, generated from a seeded grammar in well under a second: it exercises exactly
the code paths of the real data (same file names, same line layout, headings that the KD generator must drop),
and its text is simple, regular English, so a pretrained BERT's MLM loss on it is low and training lowers it.
Numbers measured on it say nothing about the paper's numbers.

Layout, as in the raw WikiText files: every line starts with a space; an article is ``" = Title = "``, then a
blank line, then paragraphs (one per line), with ``" = = Section = = "`` subheadings surrounded by blank lines;
punctuation is split off by spaces and hyphens are written ``@-@``.

The world behind the text has fixed regularities, so masked tokens are predictable from context: each town keeps
its river, trade, number of bridges and neighbour everywhere it is mentioned; a town's roof colour follows from
its region, a river's sea and a century from a year; every animal has one colour, food and home; bridge counts
are summed correctly. Validation and test articles describe towns that the training articles mention as
neighbours, so training on ``wiki.train.raw`` helps on ``wiki.valid.raw``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path

from tamt_core.data.caching import build_once, cache_root

GENERATOR_VERSION = "v1"
"""Bump whenever the generated text changes: the cache folder name includes it (see :func:`smoke_wikitext_dir`)."""

SPLIT_FILES: dict[str, str] = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}

_PREFIXES = ("oak", "ash", "elm", "stone", "red", "green", "black", "white", "high", "low", "long", "old", "new",
             "salt", "iron", "mill", "fair", "bright", "rose", "wolf", "bear", "fox", "deer", "swan", "hawk", "king",
             "queen", "corn", "sand", "wind", "frost", "gold")
_SUFFIXES = ("ford", "bridge", "field", "wood", "dale", "brook", "ton", "ham", "bury", "port", "mouth", "hill", "well",
             "gate", "moor", "vale", "haven")
_COUNTRIES = ("Arland", "Norvia", "Estmark")
_REGION_ROOF = {"north": "grey", "south": "red", "east": "white", "west": "brown"}
_RIVER_SEA = {"Tam": "Grey Sea", "Lune": "Grey Sea", "Avon": "Silver Sea", "Isis": "Silver Sea", "Wye": "Cold Sea",
              "Esk": "Cold Sea", "Ouse": "Green Sea", "Dart": "Green Sea", "Tees": "Quiet Sea", "Calder": "Quiet Sea"}
_TRADES = ("fish", "wool", "salt", "bread", "iron", "wine", "cloth", "timber", "cheese", "glass", "paper", "leather",
           "honey", "rope")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_FIRST_NAMES = ("John", "Mary", "Thomas", "Anne", "William", "Alice", "Robert", "Margaret", "Henry", "Elizabeth",
                "Richard", "Catherine", "Edward", "Jane", "Walter", "Emma")
# Each animal with its colour, food, home and size.
_ANIMALS = {
    "fox": ("red", "mice", "forest", "small"), "otter": ("brown", "fish", "river", "small"),
    "heron": ("grey", "frogs", "marsh", "tall"), "badger": ("black", "worms", "wood", "strong"),
    "owl": ("white", "mice", "tower", "quiet"), "eagle": ("brown", "rabbits", "mountains", "large"),
    "hare": ("brown", "grass", "meadow", "fast"), "beaver": ("brown", "wood", "river", "busy"),
    "swan": ("white", "plants", "lake", "large"), "crow": ("black", "seeds", "fields", "clever"),
    "frog": ("green", "insects", "pond", "small"), "squirrel": ("red", "nuts", "forest", "quick"),
    "deer": ("brown", "leaves", "forest", "shy"), "goose": ("grey", "grass", "lake", "loud"),
    "wolf": ("grey", "deer", "hills", "strong"), "bear": ("brown", "berries", "mountains", "large"),
}
_MONTH_SEASON = {"january": "winter", "february": "winter", "march": "spring", "april": "spring", "may": "spring",
                 "june": "summer", "july": "summer", "august": "summer", "september": "autumn",
                 "october": "autumn", "november": "autumn", "december": "winter"}
_ORDINALS = {11: "twelfth", 12: "thirteenth", 13: "fourteenth", 14: "fifteenth", 15: "sixteenth", 16: "seventeenth",
             17: "eighteenth", 18: "nineteenth"}
_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")


def number_word(n: int) -> str:
    """English number word in WikiText spelling (0–99): ``21 -> "twenty @-@ one"``."""
    if n < 20:
        return _ONES[n]
    tens = ("twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")[n // 10 - 2]
    return tens if n % 10 == 0 else f"{tens} @-@ {_ONES[n % 10]}"


@dataclass(frozen=True)
class _Town:
    name: str
    country: str
    region: str
    river: str
    trade: str
    bridges: int
    founded: int
    founder: str
    population: int
    animal: str
    market_day: str
    festival_month: str
    neighbour: str = ""
    neighbour_bridges: int = 0
    neighbour_dir: str = ""
    neighbour_miles: int = 0


def _make_towns(rng: random.Random, count: int) -> list[_Town]:
    names = [f"{p}{s}".capitalize() for p in _PREFIXES for s in _SUFFIXES]
    rng.shuffle(names)
    if count > len(names):
        raise ValueError(f"at most {len(names)} articles per corpus, asked for {count}")
    towns = [_Town(name=n, country=rng.choice(_COUNTRIES), region=rng.choice(list(_REGION_ROOF)),
                   river=rng.choice(list(_RIVER_SEA)), trade=rng.choice(_TRADES), bridges=rng.randint(2, 12),
                   founded=rng.randint(1100, 1899), founder=rng.choice(_FIRST_NAMES),
                   population=rng.randint(2, 90), animal=rng.choice(list(_ANIMALS)),
                   market_day=rng.choice(_DAYS), festival_month=rng.choice(list(_MONTH_SEASON)))
             for n in names[:count]]
    # Neighbours form a ring over a shuffled order, so every town (including the held-out ones) is mentioned by
    # another article, and the facts said about it there are its own facts.
    order = list(range(count))
    rng.shuffle(order)
    out = list(towns)
    for k, i in enumerate(order):
        nb = towns[order[(k + 1) % count]]
        out[i] = replace(towns[i], neighbour=nb.name, neighbour_bridges=nb.bridges,
                         neighbour_dir=rng.choice(list(_REGION_ROOF)), neighbour_miles=rng.randint(3, 40))
    return out


def _facts(t: _Town, rng: random.Random) -> dict[str, str]:
    colour, food, home, size = _ANIMALS[t.animal]
    wild = rng.choice([a for a in _ANIMALS if a != t.animal])
    w_colour, w_food, w_home, w_size = _ANIMALS[wild]
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return dict(
        T=t.name, country=t.country, region=t.region, roof=_REGION_ROOF[t.region], river=t.river,
        sea=_RIVER_SEA[t.river], trade=t.trade, bridges=number_word(t.bridges), founded=str(t.founded),
        century=_ORDINALS[t.founded // 100], founder=t.founder, pop=number_word(t.population),
        fire=str(t.founded + rng.randint(20, 120)), animal=t.animal, a_colour=colour, a_food=food, a_home=home,
        a_size=size, wild=wild, w_colour=w_colour, w_food=w_food, w_home=w_home, w_size=w_size,
        day=t.market_day, month=t.festival_month, season=_MONTH_SEASON[t.festival_month], nb=t.neighbour,
        nb_bridges=number_word(t.neighbour_bridges), sum_bridges=number_word(t.bridges + t.neighbour_bridges),
        nb_dir=t.neighbour_dir, nb_miles=number_word(t.neighbour_miles), name=rng.choice(_FIRST_NAMES),
        a=number_word(a), b=number_word(b), ab=number_word(a + b),
        count=" , ".join(number_word(i) for i in range(1, rng.randint(4, 9))),
    )


_INTRO = (
    "{T} is a town in the {region} of {country} .",
    "It lies on the river {river} , which flows into the {sea} .",
    "{T} is known for its {trade} and for its {bridges} old bridges .",
    "About {pop} thousand people live in {T} .",
    "The roofs of {T} are {roof} , like the roofs of every town in the {region} .",
    "The symbol of the town is the {animal} .",
    "The nearest town is {nb} , which lies {nb_miles} miles to the {nb_dir} .",
)
_SECTIONS: dict[str, tuple[str, ...]] = {
    "History": (
        "{T} was founded in {founded} by a farmer named {founder} .",
        "The old church of {T} was built in the {century} century .",
        "In {fire} a great fire burned the old market , and the town was built again in stone .",
        "For many years the people of {T} sold {trade} to the people of {nb} .",
        "The first bridge over the river {river} was built soon after {T} was founded .",
        "In the {century} century {T} was a small village of farmers .",
        "A school was opened in {T} by a teacher named {name} .",
    ),
    "Geography": (
        "{T} lies in the {region} of {country} .",
        "The river {river} flows through the middle of the town and then into the {sea} .",
        "{T} has {bridges} bridges over the river {river} .",
        "{nb} lies {nb_miles} miles to the {nb_dir} of {T} .",
        "{T} has {bridges} bridges and {nb} has {nb_bridges} bridges , so together they have {sum_bridges} bridges .",
        "Like every town in the {region} , {T} has {roof} roofs .",
        "The land around {T} is green and flat , with many small farms .",
    ),
    "Economy": (
        "The main trade of {T} is {trade} .",
        "Every {day} there is a {trade} market in the main square of {T} .",
        "Most of the {trade} is sold to {nb} and to the other towns of the {region} .",
        "The {trade} of {T} is famous in all of {country} .",
        "Many of the {pop} thousand people of {T} work in the {trade} trade .",
        "Boats carry the {trade} down the river {river} to the {sea} .",
    ),
    "Wildlife": (
        "The {animal} is the symbol of {T} .",
        "The {animal} is a {a_size} {a_colour} animal that lives in the {a_home} and eats {a_food} .",
        "Near the river {river} you can often see the {wild} .",
        "The {wild} is {w_colour} and {w_size} , and it eats {w_food} .",
        "Every {wild} lives in the {w_home} .",
        "Children in {T} learn that the {animal} is {a_colour} and the {wild} is {w_colour} .",
    ),
    "Culture": (
        "Every year in {month} the people of {T} hold a festival .",
        "In {month} it is {season} in {country} .",
        "At the festival the children count the bridges : {count} .",
        "At school the children of {T} learn that {a} and {b} make {ab} .",
        "The festival ends with music and dancing by the river {river} .",
        "A teacher named {name} wrote a song about the {animal} of {T} .",
    ),
}


def _article(t: _Town, rng: random.Random) -> list[str]:
    """Lines of one article, without line breaks, in WikiText raw layout (blank lines as ``""``).

    Each section uses every sentence of its pool at most once, in a random order, split into one or two
    paragraphs; the first paragraph of every section has at least three sentences (> 20 tokens), as real
    WikiText sections do, so the KD generator keeps it (reference-impl §6.2).
    """
    facts = _facts(t, rng)
    intro = [_INTRO[0], *rng.sample(_INTRO[1:], k=rng.randint(3, len(_INTRO) - 1))]
    lines = [f"= {t.name} =", "", " ".join(s.format(**facts) for s in intro)]
    for title in rng.sample(list(_SECTIONS), k=rng.randint(3, len(_SECTIONS))):
        pool = _SECTIONS[title]
        picks = [s.format(**facts) for s in rng.sample(pool, k=rng.randint(4, len(pool)))]
        cut = rng.randint(3, len(picks) - 3) if len(picks) >= 6 and rng.random() < 0.5 else len(picks)
        lines += ["", f"= = {title} = =", "", " ".join(picks[:cut])]
        if picks[cut:]:
            lines.append(" ".join(picks[cut:]))
    return lines + [""]


def _render(articles: list[list[str]]) -> str:
    # WikiText raw: every line, blank ones included, is " " + content + " \n" (blank -> " \n").
    body = [""] + [line for art in articles for line in art]
    return "".join(f" {line} \n" if line else " \n" for line in body)


def write_smoke_wikitext(directory: Path, *, seed: int = 0, train_articles: int = 170, valid_articles: int = 22,
                         test_articles: int | None = None) -> Path:
    """Write ``wiki.{train,valid,test}.raw`` (WikiText-103 raw layout) into ``directory`` and return it.

    Deterministic: the same arguments give byte-identical files. Defaults give about 300 KB of training text
    (~130 blocks of 512 BERT tokens) and about 40 KB of validation text (~17 blocks). ``test_articles`` defaults to
    ``valid_articles``.
    """
    test_articles = valid_articles if test_articles is None else test_articles
    rng = random.Random(f"tamt-smoke-wikitext-{GENERATOR_VERSION}-{seed}")
    towns = _make_towns(rng, train_articles + valid_articles + test_articles)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    bounds = {"train": (0, train_articles), "validation": (train_articles, train_articles + valid_articles),
              "test": (train_articles + valid_articles, len(towns))}
    for split, (lo, hi) in bounds.items():
        text = _render([_article(t, rng) for t in towns[lo:hi]])
        (directory / SPLIT_FILES[split]).write_text(text, encoding="utf-8")
    return directory


def smoke_wikitext_dir(root: Path | None = None) -> Path:
    """Return a directory holding the default smoke corpus, generating it on first use.

    Lives in ``<root>/smoke-wikitext-<GENERATOR_VERSION>`` (``root`` defaults to ``$TAMT_CACHE`` or
    ``~/.cache/tamt``), so a new generator version never reuses stale text.
    """
    target = (root or cache_root()) / f"smoke-wikitext-{GENERATOR_VERSION}"
    return build_once(target, write_smoke_wikitext,
                      lambda d: all((d / f).is_file() for f in SPLIT_FILES.values()))
