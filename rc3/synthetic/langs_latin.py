"""Grammars of the synthetic world's languages written in Latin script: en, cs, de, fr, es, pt, id, tr, sw.

Agreement is handled where the language needs it: gender of the shape noun for adjectives and
articles (cs, de, fr, es, pt), case in German questions (accusative after "Gibt es"), noun class
of the shape for the Swahili connective (-a). Word order follows each language (adjective after
the noun in fr/es/pt/id/sw, position first in Turkish).
"""
from __future__ import annotations

from typing import Sequence

from rc3.synthetic.grammar import Asker, Captioner, Claimer, PairStater, cap, check_objects, join_list, other_side, register
from rc3.synthetic.world import Obj


@register
class English(Captioner, Claimer, Asker, PairStater):
    code = "en"
    n_styles = 5
    SHAPES = {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star"}
    POS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
           "middle": "in the middle"}
    # Five frames so that English training images can carry five different sentences (Flickr30k style).
    FRAMES = ("{}", "there is {}", "a picture of {}", "an image showing {}", "{}")

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        if style == 4:
            items = [f"a {o.colour} {o.shape} is {self.POS[o.position]}" for o in objs]
        else:
            items = [f"a {o.colour} {o.shape} {self.POS[o.position]}" for o in objs]
        return cap(self.FRAMES[style].format(join_list(items, ", ", " and "))) + "."

    def claim_colour(self, shape: str, colour: str) -> str:
        return f"The {shape} is {colour}."

    def claim_position(self, shape: str, position: str) -> str:
        return f"The {shape} is {self.POS[position]}."

    def ask_colour(self, shape: str) -> str:
        return f"What color is the {shape}?"

    def ask_position(self, shape: str) -> str:
        return f"Where is the {shape}?"

    def ask_shape(self, position: str) -> str:
        return f"Which shape is {self.POS[position]}?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"Is there a {colour} {shape}?"

    def pair_more(self, side: str) -> str:
        return f"The {side} image has more shapes than the {other_side(side)} image."

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        return f"The {side} image contains a {colour} {shape}."

    def pair_both(self, shape: str) -> str:
        return f"Both images contain a {shape}."


@register
class Czech(Captioner):
    code = "cs"
    SHAPES = {"circle": ("kruh", "m"), "square": ("čtverec", "m"), "triangle": ("trojúhelník", "m"),
              "star": ("hvězda", "f")}
    COLOURS = {"red": ("červený", "červená"), "green": ("zelený", "zelená"), "blue": ("modrý", "modrá"),
               "yellow": ("žlutý", "žlutá"), "black": ("černý", "černá"), "white": ("bílý", "bílá")}
    POS = {"left": "vlevo", "right": "vpravo", "top": "nahoře", "bottom": "dole", "middle": "uprostřed"}

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = []
        for o in objs:
            noun, gender = self.SHAPES[o.shape]
            adj = self.COLOURS[o.colour][0 if gender == "m" else 1]
            items.append(f"{adj} {noun} {self.POS[o.position]}")
        return cap(join_list(items, ", ", " a ")) + "."


@register
class German(Captioner, Asker):
    code = "de"
    SHAPES = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"), "star": ("Stern", "m")}
    STEMS = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "black": "schwarz", "white": "weiß"}
    POS = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "middle": "in der Mitte"}

    def _indefinite(self, colour: str, shape: str, case: str) -> str:
        """Mixed declension after ein/einen: nom. 'ein roter Kreis', acc. 'einen roten Kreis', neuter 'ein rotes Quadrat'."""
        noun, gender = self.SHAPES[shape]
        stem = self.STEMS[colour]
        if gender == "n":
            return f"ein {stem}es {noun}"
        return f"ein {stem}er {noun}" if case == "nom" else f"einen {stem}en {noun}"

    def _definite(self, shape: str) -> str:
        noun, gender = self.SHAPES[shape]
        return f"{'der' if gender == 'm' else 'das'} {noun}"

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self._indefinite(o.colour, o.shape, 'nom')} {self.POS[o.position]}" for o in objs]
        return cap(join_list(items, ", ", " und ")) + "."

    def ask_colour(self, shape: str) -> str:
        return f"Welche Farbe hat {self._definite(shape)}?"

    def ask_position(self, shape: str) -> str:
        return f"Wo ist {self._definite(shape)}?"

    def ask_shape(self, position: str) -> str:
        return f"Welche Form ist {self.POS[position]}?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"Gibt es {self._indefinite(colour, shape, 'acc')}?"


@register
class French(Captioner, Claimer):
    code = "fr"
    SHAPES = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"), "star": ("étoile", "f")}
    COLOURS = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
               "yellow": ("jaune", "jaune"), "black": ("noir", "noire"), "white": ("blanc", "blanche")}
    POS = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "middle": "au centre"}

    def _adj(self, colour: str, shape: str) -> str:
        return self.COLOURS[colour][0 if self.SHAPES[shape][1] == "m" else 1]

    def _definite(self, shape: str) -> str:
        noun, gender = self.SHAPES[shape]
        if noun[0] in "aeiouéè":
            return f"l'{noun}"
        return f"{'le' if gender == 'm' else 'la'} {noun}"

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = []
        for o in objs:
            noun, gender = self.SHAPES[o.shape]
            items.append(f"{'un' if gender == 'm' else 'une'} {noun} {self._adj(o.colour, o.shape)} {self.POS[o.position]}")
        return cap(join_list(items, ", ", " et ")) + "."

    def claim_colour(self, shape: str, colour: str) -> str:
        return f"{cap(self._definite(shape))} est {self._adj(colour, shape)}."

    def claim_position(self, shape: str, position: str) -> str:
        return f"{cap(self._definite(shape))} est {self.POS[position]}."


class _Iberian(Captioner):
    """Spanish and Portuguese share the pattern 'un(a) <noun> <adjective agreeing in gender> <position>'."""

    SHAPES: dict[str, tuple[str, str]] = {}
    COLOURS: dict[str, tuple[str, str]] = {}
    POS: dict[str, str] = {}
    ARTICLES = {"m": ("un", "el"), "f": ("una", "la")}
    AND = " y "

    def _adj(self, colour: str, shape: str) -> str:
        return self.COLOURS[colour][0 if self.SHAPES[shape][1] == "m" else 1]

    def _np(self, colour: str, shape: str) -> str:
        noun, gender = self.SHAPES[shape]
        return f"{self.ARTICLES[gender][0]} {noun} {self._adj(colour, shape)}"

    def _definite(self, shape: str) -> str:
        noun, gender = self.SHAPES[shape]
        return f"{self.ARTICLES[gender][1]} {noun}"

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self._np(o.colour, o.shape)} {self.POS[o.position]}" for o in objs]
        return cap(join_list(items, ", ", self.AND)) + "."


@register
class Spanish(_Iberian, Claimer):
    code = "es"
    SHAPES = {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
              "star": ("estrella", "f")}
    COLOURS = {"red": ("rojo", "roja"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
               "yellow": ("amarillo", "amarilla"), "black": ("negro", "negra"), "white": ("blanco", "blanca")}
    POS = {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo",
           "middle": "en el centro"}

    def claim_colour(self, shape: str, colour: str) -> str:
        return f"{cap(self._definite(shape))} es {self._adj(colour, shape)}."

    def claim_position(self, shape: str, position: str) -> str:
        return f"{cap(self._definite(shape))} está {self.POS[position]}."


@register
class Portuguese(_Iberian, Asker):
    code = "pt"
    SHAPES = {"circle": ("círculo", "m"), "square": ("quadrado", "m"), "triangle": ("triângulo", "m"),
              "star": ("estrela", "f")}
    COLOURS = {"red": ("vermelho", "vermelha"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
               "yellow": ("amarelo", "amarela"), "black": ("preto", "preta"), "white": ("branco", "branca")}
    POS = {"left": "à esquerda", "right": "à direita", "top": "na parte superior", "bottom": "na parte inferior",
           "middle": "no centro"}
    ARTICLES = {"m": ("um", "o"), "f": ("uma", "a")}
    AND = " e "

    def ask_colour(self, shape: str) -> str:
        return f"De que cor é {self._definite(shape)}?"

    def ask_position(self, shape: str) -> str:
        return f"Onde está {self._definite(shape)}?"

    def ask_shape(self, position: str) -> str:
        return f"Que forma está {self.POS[position]}?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"Há {self._np(colour, shape)}?"


@register
class Indonesian(Captioner, Asker, PairStater):
    code = "id"
    SHAPES = {"circle": "lingkaran", "square": "persegi", "triangle": "segitiga", "star": "bintang"}
    COLOURS = {"red": "merah", "green": "hijau", "blue": "biru", "yellow": "kuning", "black": "hitam", "white": "putih"}
    POS = {"left": "di sebelah kiri", "right": "di sebelah kanan", "top": "di bagian atas", "bottom": "di bagian bawah",
           "middle": "di tengah"}
    SIDES = {"left": "kiri", "right": "kanan"}

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self.SHAPES[o.shape]} {self.COLOURS[o.colour]} {self.POS[o.position]}" for o in objs]
        # Indonesian lists of three or more take a comma before "dan".
        body = join_list(items, ", ", ", dan " if len(items) > 2 else " dan ")
        return f"Ada {body}."

    def ask_colour(self, shape: str) -> str:
        return f"Apa warna {self.SHAPES[shape]} itu?"

    def ask_position(self, shape: str) -> str:
        return f"Di mana letak {self.SHAPES[shape]} itu?"

    def ask_shape(self, position: str) -> str:
        return f"Bentuk apa yang ada {self.POS[position]}?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"Apakah ada {self.SHAPES[shape]} {self.COLOURS[colour]}?"

    def pair_more(self, side: str) -> str:
        return f"Gambar {self.SIDES[side]} memiliki lebih banyak bentuk daripada gambar {self.SIDES[other_side(side)]}."

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        return f"Ada {self.SHAPES[shape]} {self.COLOURS[colour]} pada gambar {self.SIDES[side]}."

    def pair_both(self, shape: str) -> str:
        return f"Kedua gambar memiliki {self.SHAPES[shape]}."


@register
class Turkish(Captioner, PairStater):
    code = "tr"
    SHAPES = {"circle": "daire", "square": "kare", "triangle": "üçgen", "star": "yıldız"}
    COLOURS = {"red": "kırmızı", "green": "yeşil", "blue": "mavi", "yellow": "sarı", "black": "siyah", "white": "beyaz"}
    POS = {"left": "solda", "right": "sağda", "top": "üstte", "bottom": "altta", "middle": "ortada"}
    SIDES = {"left": "soldaki", "right": "sağdaki"}

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self.POS[o.position]} {self.COLOURS[o.colour]} bir {self.SHAPES[o.shape]}" for o in objs]
        return cap(join_list(items, ", ", " ve ")) + " var."

    def pair_more(self, side: str) -> str:
        return f"{cap(self.SIDES[side])} resimde {self.SIDES[other_side(side)]} resimden daha fazla şekil var."

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        return f"{cap(self.SIDES[side])} resimde {self.COLOURS[colour]} bir {self.SHAPES[shape]} var."

    def pair_both(self, shape: str) -> str:
        return f"Her iki resimde de bir {self.SHAPES[shape]} var."


@register
class Swahili(PairStater):
    code = "sw"
    # Shape noun and the connective -a agreeing with its noun class (m- class 3: wa; class 9: ya).
    SHAPES = {"circle": ("mduara", "wa"), "square": ("mraba", "wa"), "triangle": ("pembetatu", "ya"),
              "star": ("nyota", "ya")}
    # "rangi" (class 9) + colour: -ekundu/-eusi/-eupe agree with it (ny-); the others are nouns after "ya".
    COLOURS = {"red": "rangi nyekundu", "green": "rangi ya kijani", "blue": "rangi ya bluu",
               "yellow": "rangi ya njano", "black": "rangi nyeusi", "white": "rangi nyeupe"}
    SIDES = {"left": "kushoto", "right": "kulia"}

    def pair_more(self, side: str) -> str:
        return (f"Picha ya {self.SIDES[side]} ina maumbo mengi zaidi kuliko picha ya "
                f"{self.SIDES[other_side(side)]}.")

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        noun, conn = self.SHAPES[shape]
        return f"Picha ya {self.SIDES[side]} ina {noun} {conn} {self.COLOURS[colour]}."

    def pair_both(self, shape: str) -> str:
        return f"Picha zote mbili zina {self.SHAPES[shape][0]}."
