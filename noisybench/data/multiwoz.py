"""MultiWOZ 2.x in its release format (Budzianowski et al. 2018; 2.1: Eric et al. 2019; 2.4: Ye et
al. 2022), for dialogue state tracking.

Files, per version, in `data_dir/multiwoz/<version>/`: `data.json` (dialogue id -> {"log": [...]},
user and system turns alternating, user first; the belief state after user turn t is in the
`metadata` of the following system turn `log[2t+1]`, per domain under `semi` and `book`) and the
validation and test id lists `valListFile.{txt,json}`, `testListFile.{txt,json}` (one id per line).
If they are missing they are taken from the release zip in `<version>/raw/` (placed there by hand, or
downloaded when `download` is true: 2.1 from budzianowski/multiwoz, 2.4 from smartyfh/MultiWOZ2.4).

Versions: train on `train_version` (2.1) training dialogues; select on and test with `eval_version`
(2.4) dev and test dialogues. 2.4 re-annotated only dev and test; its training set is 2.1's, so the
training labels carry 2.1's real annotation noise and there is no clean reference for them.

Slots: the 30 of TripPy's `multiwoz21` config (hotel 10, restaurant 7, attraction 3, taxi 4, train 6),
named `<domain>-<slot>` with `book_` for booking slots. Police and hospital are not tracked.
Normalisation: lowercase, whitespace collapsed; "", "not mentioned", "none", "not given" -> none;
"dontcare", "dont care", "don't care", "do n't care", "does not care", "any", "doesn't care" ->
dontcare; "guesthouse"/"guesthouses" -> "guest house". `book.booked` lists are ignored.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from noisybench.data.dialogue import DONTCARE, NONE, Dialogue, DialoguePool, Turn
from noisybench.data.download import fetch
from noisybench.errors import ConfigError, DataError
from noisybench.utils import resolve_data_dir

SLOTS = [
    "hotel-book_day", "hotel-book_people", "hotel-book_stay", "hotel-area", "hotel-internet", "hotel-name",
    "hotel-parking", "hotel-pricerange", "hotel-stars", "hotel-type",
    "restaurant-book_day", "restaurant-book_people", "restaurant-book_time", "restaurant-area",
    "restaurant-food", "restaurant-name", "restaurant-pricerange",
    "attraction-area", "attraction-name", "attraction-type",
    "taxi-arriveBy", "taxi-departure", "taxi-destination", "taxi-leaveAt",
    "train-book_people", "train-arriveBy", "train-day", "train-departure", "train-destination", "train-leaveAt",
]
URLS = {"2.1": "https://github.com/budzianowski/multiwoz/raw/master/data/MultiWOZ_2.1.zip",
        "2.4": "https://github.com/smartyfh/MultiWOZ2.4/raw/main/data/MULTIWOZ2.4.zip"}
NONE_VALUES = {"", "not mentioned", "none", "not given"}
DONTCARE_VALUES = {"dontcare", "dont care", "don't care", "do n't care", "does not care", "any",
                   "doesn't care", "do nt care"}
VARIANTS = {"guesthouse": "guest house", "guesthouses": "guest house"}


def normalize_value(value) -> str:
    v = " ".join(str(value).lower().split())
    if v in NONE_VALUES:
        return NONE
    if v in DONTCARE_VALUES:
        return DONTCARE
    return VARIANTS.get(v, v)


def state_of(metadata: dict) -> dict[str, str]:
    """The belief state (non-none slots) of one system turn's metadata."""
    out = {}
    for slot in SLOTS:
        domain, name = slot.split("-")
        part, key = ("book", name[5:]) if name.startswith("book_") else ("semi", name)
        v = normalize_value(metadata.get(domain, {}).get(part, {}).get(key, ""))
        if v != NONE:
            out[slot] = v
    return out


def dialogue_of(did: str, entry: dict) -> Dialogue:
    log = entry.get("log")
    if not isinstance(log, list):
        raise DataError(f"MultiWOZ dialogue {did} has no 'log' list; the data.json is not in the release format")
    turns, system = [], ""
    for t in range(0, len(log) - 1, 2):  # a trailing user turn without a system reply has no state
        turns.append(Turn(system, log[t].get("text", ""), state_of(log[t + 1].get("metadata", {}))))
        system = log[t + 1].get("text", "")
    return Dialogue(did, turns)


def _read_ids(root: Path, stem: str) -> list[str]:
    for suffix in (".txt", ".json"):
        p = root / f"{stem}{suffix}"
        if p.is_file():
            return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    raise DataError(f"{root} has no {stem}.txt or {stem}.json; put the MultiWOZ release files there")


def _version_dir(data_dir: Path, version: str, download: bool) -> Path:
    """The folder with MultiWOZ `version`'s files: already there, extracted from a release zip placed
    in its raw/ folder, or (only when `download` is true) from the zip downloaded there."""
    root = data_dir / "multiwoz" / version
    if (root / "data.json").is_file():
        return root
    archive = root / "raw" / Path(URLS[version]).name
    hint = (f"put data.json, valListFile.txt and testListFile.txt of MultiWOZ {version} in {root} "
            f"(or set data_dir=DIR to a directory with multiwoz/{version}/ in it), or place the release zip "
            f"{archive.name} ({URLS[version]}) in {archive.parent}")
    if not archive.is_file():
        if not download:
            raise DataError(f"MultiWOZ {version} is not in {root} and downloading is off "
                            "(dataset.loader.download=false, the default under NOISYBENCH_DOWNLOAD=false); "
                            f"{hint}, or allow the download (dataset.loader.download=true, needs network)")
        archive = fetch(URLS[version], archive, hint=hint)
    try:
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                base = Path(name).name
                if base in ("data.json", "valListFile.txt", "valListFile.json", "testListFile.txt",
                            "testListFile.json") and "__MACOSX" not in name:
                    (root / base).write_bytes(z.read(name))
    except zipfile.BadZipFile:
        raise DataError(f"{archive} is not a zip archive; delete it to re-download") from None
    if not (root / "data.json").is_file():
        raise DataError(f"{archive} has no data.json; {hint}")
    return root


def _load(root: Path) -> dict:
    try:
        return json.loads((root / "data.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {root / 'data.json'} ({e}); re-download or replace it") from None


def load_multiwoz(data_dir: str | None = None, train_version: str = "2.1", eval_version: str = "2.4",
                  download: bool = True) -> DialoguePool:
    train_version, eval_version = str(train_version), str(eval_version)
    for key, v in (("train_version", train_version), ("eval_version", eval_version)):
        if v not in URLS:
            raise ConfigError(f"dataset.loader.{key}={v!r} is not supported; use one of {', '.join(URLS)}")
    base = resolve_data_dir(data_dir)
    troot = _version_dir(base, train_version, download)
    eroot = troot if eval_version == train_version else _version_dir(base, eval_version, download)
    tdata, edata = _load(troot), (_load(eroot) if eroot != troot else None)
    edata = edata if edata is not None else tdata
    val_ids, test_ids = _read_ids(eroot, "valListFile"), _read_ids(eroot, "testListFile")
    held = set(val_ids) | set(test_ids)
    train = [dialogue_of(d, e) for d, e in sorted(tdata.items()) if d not in held]
    missing = [d for d in val_ids + test_ids if d not in edata]
    if missing:
        raise DataError(f"{len(missing)} dev/test ids (e.g. {missing[0]}) are not in {eroot / 'data.json'}; "
                        "the id lists and data.json are from different releases")
    dev = [dialogue_of(d, edata[d]) for d in val_ids]
    test = [dialogue_of(d, edata[d]) for d in test_ids]
    return DialoguePool(
        slots=list(SLOTS), train=train + dev, test=test,
        val_index=list(range(len(train), len(train) + len(dev))),
        clean_known=False,  # the training labels are real noisy annotations
        info={"train_version": train_version, "eval_version": eval_version, "num_train_dialogues": len(train),
              "num_dev_dialogues": len(dev), "num_test_dialogues": len(test)})
