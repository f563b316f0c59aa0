"""Hotwords: per-request phrase boosting, built on NeMo's GPU phrase boosting (GPU-PB).

A request's hotwords become a boosting tree over the model's tokens. Inside greedy TDT
label-looping decoding NeMo adds the tree's scores to the joint's label scores (shallow fusion,
no retraining, CUDA graphs kept where Triton is present): where the model hesitates between a
hotword and a similar-sounding token, the hotword wins. Boosting never turns a blank into a
token, so it fixes misheard words, not skipped ones.

Every request keeps its own list: NeMo's biasing multi-model holds one tree per distinct list
and takes one tree id per utterance, so jobs with different hotwords (or none) still share one
forward pass and one decoding call, and live streams with different hotwords share one step.

Flow: request fields -> ``parse_hotwords`` (limits; ``HotwordError`` is ``invalid_input``) -> ``Hotwords``
-> ``TreeCache.get`` (spellings the tokenizer can write, built once per distinct list, off the
model lock) -> ``Boosting`` -> registered in a decoding computer's multi-model for one decoding
call (batch) or for the life of a stream, then removed.
"""

from __future__ import annotations

import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

# Limits (README "Hotwords"; docs/PERFORMANCE.md has what 10, 100 and 1000 phrases cost)
MAX_HOTWORDS = 100
MAX_PHRASE_CHARS = 50
MAX_PHRASE_WORDS = 5
PUNCTUATION = "'-.&+"  # allowed inside a phrase besides letters, digits and spaces: O'Brien, e-mail, Node.js, AT&T, C++
DEFAULT_BOOST = 1.5
MIN_BOOST, MAX_BOOST = 0.0, 5.0
# NeMo's boosting-tree scores (its defaults): the first token of a phrase gets the context score,
# each further token ``context_score * depth_scaling + log(depth)``; a partial match that breaks
# off gives its score back. ``boost`` multiplies all of it.
CONTEXT_SCORE = 1.0
DEPTH_SCALING = 2.0
TREE_CACHE_SIZE = 128


class HotwordError(ValueError):
    """A hotword list or boost outside the limits (``invalid_input``)."""


@dataclass(frozen=True)
class Hotwords:
    phrases: tuple[str, ...]  # normalized, de-duplicated, in the order given
    boost: float = DEFAULT_BOOST


def parse_hotwords(hotwords, boost) -> Hotwords | None:
    """Check the request's ``hotwords`` (list of strings) and ``hotword_boost`` (number).
    None when there is nothing to boost (no list, an empty list, or boost 0)."""
    if boost is None:
        boost = DEFAULT_BOOST
    elif (
        isinstance(boost, bool)
        or not isinstance(boost, (int, float))
        or not math.isfinite(boost)
        or not MIN_BOOST <= boost <= MAX_BOOST
    ):
        raise HotwordError(f"hotword_boost must be a number from {MIN_BOOST:g} to {MAX_BOOST:g}")
    if hotwords is None:
        return None
    if not isinstance(hotwords, list):
        raise HotwordError("hotwords must be a list of strings")
    if len(hotwords) > MAX_HOTWORDS:
        raise HotwordError(f"at most {MAX_HOTWORDS} hotwords per request (got {len(hotwords)})")
    phrases: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(hotwords):
        if not isinstance(raw, str):
            raise HotwordError(f"hotwords[{i}] must be a string")
        phrase = " ".join(unicodedata.normalize("NFC", raw).replace("\u2019", "'").split())
        if not phrase:
            raise HotwordError(f"hotwords[{i}] is empty")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise HotwordError(f"hotwords[{i}] is longer than {MAX_PHRASE_CHARS} characters")
        if len(phrase.split()) > MAX_PHRASE_WORDS:
            raise HotwordError(f"hotwords[{i}] has more than {MAX_PHRASE_WORDS} words")
        bad = sorted({c for c in phrase if not _allowed(c)})
        if bad:
            raise HotwordError(
                f"hotwords[{i}] contains {''.join(bad)!r}: use letters, digits, spaces and {' '.join(PUNCTUATION)}"
            )
        if phrase.casefold() not in seen:
            seen.add(phrase.casefold())
            phrases.append(phrase)
    if not phrases or boost == 0:
        return None
    return Hotwords(tuple(phrases), float(boost))


def _allowed(c: str) -> bool:
    return c.isalnum() or c == " " or c in PUNCTUATION or unicodedata.category(c).startswith("M")


def spellings(phrase: str, cased: bool) -> list[str]:
    """The written forms to boost. A lowercase tokenizer only writes lowercase. A cased one
    (parakeet v3) writes "Kubernetes" at a sentence start or as a name and "kubernetes" elsewhere,
    and the tree matches tokens, not letters: boost the form as given, all lowercase, with a capital
    first letter, and with every word capitalized ("new york" -> "New York")."""
    if not cased:
        return [phrase.lower()]
    forms = [
        phrase,
        phrase.lower(),
        phrase[:1].upper() + phrase[1:],
        " ".join(w[:1].upper() + w[1:] for w in phrase.split()),
    ]
    return list(dict.fromkeys(forms))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Boosting:
    """One request's boosting: its tree (shared by requests with the same list) and weight."""

    tree: object  # nemo GPUBoostingTreeModel
    boost: float


class TreeCache:
    """Boosting trees for one model's tokenizer, one per distinct hotword list (LRU). Building a
    tree costs ~0.1 s of CPU (most of it NeMo's model-object set-up), so a client that sends the
    same list with every request pays it once; callers build off the model lock."""

    def __init__(self, tokenizer, size: int = TREE_CACHE_SIZE):
        self.tokenizer = tokenizer
        self.size = size
        pieces = tokenizer.ids_to_tokens(list(range(tokenizer.vocab_size)))
        self.cased = any(ch.isupper() for piece in pieces for ch in piece)
        unk = getattr(tokenizer, "unk_id", None)
        self.unk_id = unk if isinstance(unk, int) and unk >= 0 else None
        self._trees: OrderedDict[tuple[str, ...], object] = OrderedDict()
        self._lock = threading.Lock()

    def boosting(self, hotwords: Hotwords | None) -> Boosting | None:
        if hotwords is None:
            return None
        tree = self.get(hotwords.phrases)
        return None if tree is None else Boosting(tree, hotwords.boost)

    def get(self, phrases: tuple[str, ...]):
        with self._lock:
            if phrases in self._trees:
                self._trees.move_to_end(phrases)
                return self._trees[phrases]
        tree = self._build(phrases)
        with self._lock:
            self._trees[phrases] = tree
            while len(self._trees) > self.size:
                self._trees.popitem(last=False)
        return tree

    def forms(self, phrases: tuple[str, ...]) -> list[str]:
        """The spellings of ``phrases`` the tokenizer can write (a form with a character outside
        its vocabulary would boost the unknown token; it is left out)."""
        out = []
        for phrase in phrases:
            for form in spellings(phrase, self.cased):
                ids = self.tokenizer.text_to_ids(form)
                if ids and (self.unk_id is None or self.unk_id not in ids):
                    out.append(form)
        return list(dict.fromkeys(out))

    def _build(self, phrases: tuple[str, ...]):
        from nemo.collections.asr.parts.context_biasing.boosting_graph_batched import (
            BoostingTreeModelConfig,
            GPUBoostingTreeModel,
        )

        forms = self.forms(phrases)
        if not forms:
            return None
        cfg = BoostingTreeModelConfig(
            key_phrases_list=forms, context_score=CONTEXT_SCORE, depth_scaling=DEPTH_SCALING, use_triton=None
        )
        return GPUBoostingTreeModel.from_config(cfg, tokenizer=self.tokenizer)


# ---------------------------------------------------------------------------------------------
def register(multi_model, boostings: list[Boosting | None]) -> list[int]:
    """Add each distinct boosting to a decoding computer's biasing multi-model; one id per item
    (-1: none). Call with the model lock held: a decoding step reads the multi-model."""
    ids: dict[tuple[int, float], int] = {}
    out = []
    for b in boostings:
        if b is None:
            out.append(-1)
            continue
        key = (id(b.tree), b.boost)
        if key not in ids:
            ids[key] = multi_model.add_model(b.tree, alpha=b.boost)
        out.append(ids[key])
    return out


def unregister(multi_model, ids: list[int]) -> None:
    for i in sorted({i for i in ids if i >= 0}):
        multi_model.remove_model(i)


class PerUtteranceBiasing:
    """Wraps the offline decoder's label-looping computer so the engine can hand it one biasing
    id per utterance. NeMo 3.0 takes those ids only from "partial hypotheses", whose merge drops
    TDT token durations (word timestamps then fail); the streaming pipeline passes ids to the
    computer directly, and so does this wrapper."""

    def __init__(self, computer):
        self.computer = computer
        self.ids = None  # torch.LongTensor [batch] for the current decoding call, or None

    def __getattr__(self, name):  # everything else is the computer's
        return getattr(self.computer, name)

    def __call__(self, x, out_len, prev_batched_state=None, multi_biasing_ids=None):
        if self.ids is not None:
            multi_biasing_ids = self.ids.to(out_len.device)
        return self.computer(
            x=x, out_len=out_len, prev_batched_state=prev_batched_state, multi_biasing_ids=multi_biasing_ids
        )
