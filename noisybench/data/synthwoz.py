"""synthwoz: a procedurally generated, MultiWOZ-shaped dialogue corpus for CPU-sized DST runs.

Restaurant, hotel and taxi domains, 18 slots, a fixed venue database, and template dialogues in which
the user informs constraints (one or two per turn), answers the system's requests, accepts a venue the
system offers ("yes , that sounds good": the name is in the system turn), says "any ... is fine"
(dontcare), changes their mind ("actually , make it ... instead"), books, and refers back to other
slots ("in the same area as the restaurant", "a taxi from the hotel to the restaurant", "for the same
day"). The belief state after every user turn is exact by construction, so the corpus is CLEAN:
noise is injected by `noise=dst`. Deterministic for a given `seed` (a private numpy Generator).

What it is not: natural language. The vocabulary is a few hundred words, the templates are few, and
there are no co-references beyond the ones listed, so absolute JGA says nothing about MultiWOZ; it is
a fast, offline test bed for comparing methods under controlled annotation noise.
"""
from __future__ import annotations

import numpy as np

from noisybench.data.dialogue import DONTCARE, Dialogue, DialoguePool, Turn
from noisybench.errors import ConfigError

SLOTS = [
    "restaurant-area", "restaurant-food", "restaurant-pricerange", "restaurant-name",
    "restaurant-book_day", "restaurant-book_people", "restaurant-book_time",
    "hotel-area", "hotel-pricerange", "hotel-stars", "hotel-parking", "hotel-name",
    "hotel-book_day", "hotel-book_people", "hotel-book_stay",
    "taxi-departure", "taxi-destination", "taxi-leave_at",
]
AREAS = ["north", "south", "east", "west", "centre"]
FOODS = ["italian", "chinese", "indian", "french", "thai", "british", "mexican", "korean", "turkish", "spanish"]
PRICES = ["cheap", "moderate", "expensive"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
TIMES = [f"{h}:{m}" for h in range(11, 22) for m in ("00", "15", "30", "45")]
R_NAMES = ["the golden curry", "pizza palace", "the lucky star", "bella vista", "the spice box", "la mimosa",
           "the copper kettle", "saigon city", "the punter", "royal spice", "el toro", "the eagle",
           "kymmoy", "the oak bistro", "curry garden", "hotpot house"]
H_NAMES = ["acorn guest house", "the gonville", "alpha milton", "city centre north", "the lensfield",
           "aylesbray lodge", "hamilton lodge", "the cambridge belfry", "worth house", "el shaddai",
           "finches inn", "the varsity"]
SLOT_WORDS = {"area": "area", "food": "type of food", "pricerange": "price range", "stars": "star rating",
              "parking": "parking"}


def _database(n: int = 0):
    """A fixed venue table (independent of the corpus seed, so train and test share it)."""
    rng = np.random.default_rng(12345)
    rest = [{"name": nm, "area": AREAS[rng.integers(5)], "food": FOODS[rng.integers(len(FOODS))],
             "pricerange": PRICES[rng.integers(3)]} for nm in R_NAMES]
    hotel = [{"name": nm, "area": AREAS[rng.integers(5)], "pricerange": PRICES[rng.integers(3)],
              "stars": str(rng.integers(2, 6)), "parking": ["yes", "no"][rng.integers(2)]} for nm in H_NAMES]
    return {"restaurant": rest, "hotel": hotel}


INFORM = {
    "area": ["in the {v}", "somewhere in the {v} of town", "it should be in the {v}", "located in the {v}"],
    "food": ["serving {v} food", "i would like {v} food", "that serves {v}", "{v} cuisine please"],
    "pricerange": ["in the {v} price range", "something {v}", "it should be {v}", "{v} please"],
    "stars": ["with {v} stars", "it should have {v} stars", "a {v} star rating"],
    "parking": ["parking : {v}", "{v} to free parking", "free parking {v} please"],
}
DONTCARE_T = ["any {w} is fine", "i do n't care about the {w}", "the {w} does n't matter", "any {w} will do"]
CHANGE = ["actually , make it {v} instead", "sorry , i changed my mind , {v} please", "could it be {v} instead ?"]
OPEN = {"restaurant": ["i am looking for a restaurant", "i need a place to eat", "can you find me a restaurant"],
        "hotel": ["i need a hotel", "i am looking for a place to stay", "please find me a hotel"]}


class _Gen:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.db = rng, _database()

    def pick(self, xs):
        return xs[self.rng.integers(len(xs))]

    def dialogue(self, did: str) -> Dialogue:
        rng = self.rng
        state: dict[str, str] = {}
        turns: list[Turn] = []
        sys = ""

        def say(user: str, next_sys: str) -> None:
            nonlocal sys
            turns.append(Turn(sys, user, dict(state)))
            sys = next_sys

        domains = [self.pick(["restaurant", "hotel"])]
        if rng.random() < 0.6:
            domains.append("hotel" if domains[0] == "restaurant" else "restaurant")
        for k, dom in enumerate(domains):
            venue = self.pick(self.db[dom])
            attrs = [a for a in venue if a != "name"]
            rng.shuffle(attrs)
            goal = attrs[: rng.integers(1, len(attrs) + 1)]
            parts = []
            # a second domain may refer to the first one's area
            if k == 1 and "area" in goal and rng.random() < 0.5:
                other = domains[0]
                state[f"{dom}-area"] = state.get(f"{other}-area", venue["area"])
                if f"{other}-area" in state:
                    parts.append(f"in the same area as the {other}")
                else:
                    parts.append(self.pick(INFORM["area"]).format(v=venue["area"]))
                goal = [a for a in goal if a != "area"]
            first, rest = goal[: rng.integers(0, 3)], goal
            for a in first:
                parts.append(self._inform(dom, a, venue, state))
            rest = [a for a in goal if a not in first]
            opener = self.pick(OPEN[dom]) if k == 0 else f"i also need a {dom}"
            user = " ".join([opener] + parts).strip()
            for a in rest:  # the system asks for the remaining constraints
                say(user, f"what {SLOT_WORDS[a]} would you like ?")
                user = self._inform(dom, a, venue, state)
                if rng.random() < 0.2:  # the user changes their mind about a real value
                    alt = self._alternative(a, state.get(f"{dom}-{a}"))
                    if alt is not None:
                        say(user, f"ok , {SLOT_WORDS[a]} {state[f'{dom}-{a}']} . anything else ?")
                        state[f"{dom}-{a}"] = alt
                        user = self.pick(CHANGE).format(v=alt)
            offer = self.pick(self.db[dom]) if rng.random() < 0.3 else venue
            desc = f"{offer['pricerange']} place in the {offer['area']}"
            say(user, f"how about {offer['name']} ? it is a {desc} .")
            state[f"{dom}-name"] = offer["name"]
            user = self.pick(["yes , that sounds good", "great , that one please", "ok , i will take it"])
            if rng.random() < 0.7:  # booking
                say(user, "shall i book it for you ?")
                bk = self._book(dom, state, first_domain=domains[0] if k == 1 else None)
                user = "yes please , book it " + bk
            say(user, "anything else ?")
        if len(domains) == 2 and rng.random() < 0.6:
            user = self._taxi(domains, state)
            say(user, "your taxi is booked . anything else ?")
            user = "no , that is all . thank you"
        else:
            user = self.pick(["thank you , goodbye", "that is all , thanks"])
        say(user, "")
        return Dialogue(did, turns)

    def _inform(self, dom, a, venue, state) -> str:
        if a in ("pricerange", "area", "food") and self.rng.random() < 0.12:
            state[f"{dom}-{a}"] = DONTCARE
            return self.pick(DONTCARE_T).format(w=SLOT_WORDS[a])
        state[f"{dom}-{a}"] = venue[a]
        return self.pick(INFORM[a]).format(v=venue[a])

    def _alternative(self, a, current):
        pool = {"area": AREAS, "food": FOODS, "pricerange": PRICES, "stars": ["2", "3", "4", "5"],
                "parking": ["yes", "no"]}[a]
        if current in (None, DONTCARE):
            return None
        return self.pick([v for v in pool if v != current])

    def _book(self, dom, state, first_domain) -> str:
        parts = []
        same = first_domain is not None and f"{first_domain}-book_day" in state and self.rng.random() < 0.5
        if same:
            state[f"{dom}-book_day"] = state[f"{first_domain}-book_day"]
            parts.append(f"for the same day as the {first_domain}")
        else:
            day = self.pick(DAYS)
            state[f"{dom}-book_day"] = day
            parts.append(f"on {day}")
        if first_domain is not None and f"{first_domain}-book_people" in state and self.rng.random() < 0.5:
            state[f"{dom}-book_people"] = state[f"{first_domain}-book_people"]
            parts.append("for the same group of people")
        else:
            n = str(self.rng.integers(1, 9))
            state[f"{dom}-book_people"] = n
            parts.append(f"for {n} people")
        if dom == "restaurant":
            t = self.pick(TIMES)
            state["restaurant-book_time"] = t
            parts.append(f"at {t}")
        else:
            n = str(self.rng.integers(1, 6))
            state["hotel-book_stay"] = n
            parts.append(f"for {n} nights")
        self.rng.shuffle(parts)
        return " ".join(parts)

    def _taxi(self, domains, state) -> str:
        a, b = domains if self.rng.random() < 0.5 else domains[::-1]
        t = self.pick(TIMES)
        state["taxi-departure"], state["taxi-destination"] = state[f"{a}-name"], state[f"{b}-name"]
        state["taxi-leave_at"] = t
        if self.rng.random() < 0.6:
            return f"i also need a taxi from the {a} to the {b} , leaving at {t}"
        return f"i need a taxi from {state[f'{a}-name']} to {state[f'{b}-name']} at {t}"


def generate(num_dialogues: int, seed: int, prefix: str = "sw") -> list[Dialogue]:
    gen = _Gen(np.random.default_rng(seed))
    return [gen.dialogue(f"{prefix}{i:05d}") for i in range(num_dialogues)]


def load_synthwoz(data_dir: str | None = None, num_train: int = 1200, num_test: int = 300,
                  seed: int = 0) -> DialoguePool:
    """The training pool (validation is held out of it by `dataset.val_fraction`) and a test set,
    generated from two independent streams of the corpus seed. Nothing is read or written."""
    if int(num_train) < 2 or int(num_test) < 1:
        raise ConfigError(f"dataset.loader.num_train={num_train} / dataset.loader.num_test={num_test} are too "
                          "small (at least 2 / 1); use e.g. dataset.loader.num_train=1200 dataset.loader.num_test=300")
    ss = np.random.SeedSequence(int(seed)).spawn(2)
    g_train, g_test = _Gen(np.random.default_rng(ss[0])), _Gen(np.random.default_rng(ss[1]))
    train = [g_train.dialogue(f"train{i:05d}") for i in range(int(num_train))]
    test = [g_test.dialogue(f"test{i:05d}") for i in range(int(num_test))]
    return DialoguePool(slots=list(SLOTS), train=train, test=test,
                        info={"generator": "synthwoz", "seed": int(seed), "num_train_dialogues": len(train),
                              "num_test_dialogues": len(test)})
