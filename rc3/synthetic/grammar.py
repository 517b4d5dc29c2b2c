"""The caption grammar's interface: what a language of the synthetic world can say, and the registry.

Each language is a class holding its own small lexicon (shape nouns with their gender or class,
colour adjectives with agreement, position phrases) and realising four kinds of text:
- `Captioner.caption(objects)`: a scene description naming every given object (colour + shape +
  position), in the given order; translations of one object list are strictly aligned, since they
  all realise the same list.
- `Claimer`: XVNLI hypotheses about one shape ("The circle is red.", "The circle is on the left.").
- `Asker`: xGQA questions (colour of a shape, position of a shape, shape at a position, existence).
- `PairStater`: MaRVL / NLVR2 statements about an image pair (more shapes, contains, both contain).
A language implements only the kinds its tasks need. The languages themselves (rc3.synthetic.langs_latin,
langs_nonlatin) register with `register`; rc3.synthetic.languages looks them up (`languages_with(kind)`, ...).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from rc3.synthetic.world import Obj


class Language(ABC):  # noqa: B024  (the root of the mixins below; they declare the abstract methods)
    """A language of the world; `code` is the short code of rc3.tokenization.LANG_CODES."""

    code: str = ""
    SHAPES: dict = {}  # shape -> noun, or (noun, gender/class, ...)

    def noun(self, shape: str) -> str:
        """The bare noun for a shape (e.g. for MaRVL concept names)."""
        entry = self.SHAPES[shape]
        return entry if isinstance(entry, str) else entry[0]


class Captioner(Language):
    n_styles: int = 1  # number of distinct caption frames (English has paraphrases for 5-caption training data)

    @abstractmethod
    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        """A description naming every object of `objs` (non-empty), in that order."""


class Claimer(Language):
    @abstractmethod
    def claim_colour(self, shape: str, colour: str) -> str:
        """'The <shape> is <colour>.'"""

    @abstractmethod
    def claim_position(self, shape: str, position: str) -> str:
        """'The <shape> is <position>.'"""


class Asker(Language):
    @abstractmethod
    def ask_colour(self, shape: str) -> str:
        """'What colour is the <shape>?'"""

    @abstractmethod
    def ask_position(self, shape: str) -> str:
        """'Where is the <shape>?'"""

    @abstractmethod
    def ask_shape(self, position: str) -> str:
        """'Which shape is <position>?'"""

    @abstractmethod
    def ask_exists(self, colour: str, shape: str) -> str:
        """'Is there a <colour> <shape>?'"""


class PairStater(Language):
    @abstractmethod
    def pair_more(self, side: str) -> str:
        """'The <side> image has more shapes than the other image.' (side: left/right)"""

    @abstractmethod
    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        """'The <side> image contains a <colour> <shape>.'"""

    @abstractmethod
    def pair_both(self, shape: str) -> str:
        """'Both images contain a <shape>.'"""


def check_objects(objs: Sequence[Obj]) -> None:
    if not objs:
        raise ValueError("a caption needs at least one object")


def join_list(items: Sequence[str], sep: str, last: str) -> str:
    """'a, b and c' style joining: `sep` between items, `last` before the final one."""
    if len(items) == 1:
        return items[0]
    return sep.join(items[:-1]) + last + items[-1]


def cap(text: str) -> str:
    """Upper-case the first letter (a no-op for scripts without case)."""
    return text[:1].upper() + text[1:]


def other_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"image side must be 'left' or 'right', got {side!r}")
    return "right" if side == "left" else "left"


LANGUAGES: dict[str, Language] = {}  # code -> the one instance of its class (filled by `register`)


def register(cls: type[Language]) -> type[Language]:
    """Class decorator: one instance per language code."""
    if not cls.code or cls.code in LANGUAGES:
        raise ValueError(f"language class {cls.__name__} has an empty or duplicate code {cls.code!r}")
    LANGUAGES[cls.code] = cls()
    return cls
