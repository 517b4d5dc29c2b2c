"""Grammars of the synthetic world's languages in other scripts: ru, ar, ja, zh, ko, bn, ta.

Agreement handled: gender of the shape noun for Russian and Arabic colour adjectives, the Korean
topic/subject particle by the noun's final consonant (computed from the Hangul syllable), the
Bengali definite classifier -টি. Japanese and Chinese need no agreement; word order is
position-first as is natural there.
"""
from __future__ import annotations

from typing import Sequence

from rc3.synthetic.grammar import Asker, Captioner, Claimer, PairStater, cap, check_objects, join_list, other_side, register
from rc3.synthetic.world import Obj


@register
class Russian(Captioner, Claimer, Asker):
    code = "ru"
    SHAPES = {"circle": ("круг", "m"), "square": ("квадрат", "m"), "triangle": ("треугольник", "m"),
              "star": ("звезда", "f")}
    COLOURS = {"red": ("красный", "красная"), "green": ("зелёный", "зелёная"), "blue": ("синий", "синяя"),
               "yellow": ("жёлтый", "жёлтая"), "black": ("чёрный", "чёрная"), "white": ("белый", "белая")}
    POS = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "middle": "в центре"}

    def _adj(self, colour: str, shape: str) -> str:
        return self.COLOURS[colour][0 if self.SHAPES[shape][1] == "m" else 1]

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self._adj(o.colour, o.shape)} {self.SHAPES[o.shape][0]} {self.POS[o.position]}" for o in objs]
        return cap(join_list(items, ", ", " и ")) + "."

    def claim_colour(self, shape: str, colour: str) -> str:
        return f"{cap(self.SHAPES[shape][0])} {self._adj(colour, shape)}."

    def claim_position(self, shape: str, position: str) -> str:
        return f"{cap(self.SHAPES[shape][0])} находится {self.POS[position]}."

    def ask_colour(self, shape: str) -> str:
        return f"Какого цвета {self.SHAPES[shape][0]}?"

    def ask_position(self, shape: str) -> str:
        return f"Где находится {self.SHAPES[shape][0]}?"

    def ask_shape(self, position: str) -> str:
        return f"Какая фигура находится {self.POS[position]}?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"Есть ли {self._adj(colour, shape)} {self.SHAPES[shape][0]}?"


@register
class Arabic(Captioner, Claimer):
    code = "ar"
    SHAPES = {"circle": ("دائرة", "f"), "square": ("مربع", "m"), "triangle": ("مثلث", "m"), "star": ("نجمة", "f")}
    COLOURS = {"red": ("أحمر", "حمراء"), "green": ("أخضر", "خضراء"), "blue": ("أزرق", "زرقاء"),
               "yellow": ("أصفر", "صفراء"), "black": ("أسود", "سوداء"), "white": ("أبيض", "بيضاء")}
    POS = {"left": "على اليسار", "right": "على اليمين", "top": "في الأعلى", "bottom": "في الأسفل", "middle": "في الوسط"}

    def _adj(self, colour: str, shape: str) -> str:
        return self.COLOURS[colour][0 if self.SHAPES[shape][1] == "m" else 1]

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self.SHAPES[o.shape][0]} {self._adj(o.colour, o.shape)} {self.POS[o.position]}" for o in objs]
        # "wa" (and) is written attached to the following word.
        return "في الصورة " + " و".join(items) + "."

    def claim_colour(self, shape: str, colour: str) -> str:
        return f"ال{self.SHAPES[shape][0]} {self._adj(colour, shape)}."

    def claim_position(self, shape: str, position: str) -> str:
        return f"ال{self.SHAPES[shape][0]} {self.POS[position]}."


@register
class Japanese(Captioner):
    code = "ja"
    SHAPES = {"circle": "円", "square": "正方形", "triangle": "三角形", "star": "星"}
    COLOURS = {"red": "赤い", "green": "緑の", "blue": "青い", "yellow": "黄色い", "black": "黒い", "white": "白い"}
    POS = {"left": "左", "right": "右", "top": "上", "bottom": "下", "middle": "真ん中"}

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self.POS[o.position]}に{self.COLOURS[o.colour]}{self.SHAPES[o.shape]}" for o in objs]
        return "、".join(items) + "があります。"


@register
class Chinese(Captioner, Asker, PairStater):
    code = "zh"
    SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
    COLOURS = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "black": "黑色", "white": "白色"}
    POS = {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "middle": "中间"}
    SIDES = {"left": "左", "right": "右"}

    def caption(self, objs: Sequence[Obj], style: int = 0) -> str:
        check_objects(objs)
        items = [f"{self.POS[o.position]}有一个{self.COLOURS[o.colour]}的{self.SHAPES[o.shape]}" for o in objs]
        return "，".join(items) + "。"

    def ask_colour(self, shape: str) -> str:
        return f"{self.SHAPES[shape]}是什么颜色的？"

    def ask_position(self, shape: str) -> str:
        return f"{self.SHAPES[shape]}在哪里？"

    def ask_shape(self, position: str) -> str:
        return f"{self.POS[position]}是什么形状？"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"有{self.COLOURS[colour]}的{self.SHAPES[shape]}吗？"

    def pair_more(self, side: str) -> str:
        return f"{self.SIDES[side]}图中的形状比{self.SIDES[other_side(side)]}图中的多。"

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        return f"{self.SIDES[side]}图中有一个{self.COLOURS[colour]}的{self.SHAPES[shape]}。"

    def pair_both(self, shape: str) -> str:
        return f"两张图中都有{self.SHAPES[shape]}。"


def _has_final_consonant(word: str) -> bool:
    """Whether a Hangul word ends in a consonant (batchim): decides 은/는 and 이/가."""
    code = ord(word[-1]) - 0xAC00
    if not 0 <= code < 11172:
        raise ValueError(f"{word!r} does not end in a Hangul syllable")
    return code % 28 != 0


@register
class Korean(Asker):
    code = "ko"
    SHAPES = {"circle": "원", "square": "정사각형", "triangle": "삼각형", "star": "별"}
    COLOURS = {"red": "빨간", "green": "초록색", "blue": "파란", "yellow": "노란", "black": "검은", "white": "흰"}
    POS = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽", "middle": "가운데"}

    def _topic(self, noun: str) -> str:
        return noun + ("은" if _has_final_consonant(noun) else "는")

    def _subject(self, noun: str) -> str:
        return noun + ("이" if _has_final_consonant(noun) else "가")

    def ask_colour(self, shape: str) -> str:
        return f"{self._topic(self.SHAPES[shape])} 무슨 색입니까?"

    def ask_position(self, shape: str) -> str:
        return f"{self._topic(self.SHAPES[shape])} 어디에 있습니까?"

    def ask_shape(self, position: str) -> str:
        return f"{self.POS[position]}에 있는 도형은 무엇입니까?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"{self.COLOURS[colour]} {self._subject(self.SHAPES[shape])} 있습니까?"


@register
class Bengali(Asker):
    code = "bn"
    SHAPES = {"circle": "বৃত্ত", "square": "বর্গক্ষেত্র", "triangle": "ত্রিভুজ", "star": "তারা"}
    COLOURS = {"red": "লাল", "green": "সবুজ", "blue": "নীল", "yellow": "হলুদ", "black": "কালো", "white": "সাদা"}
    POS = {"left": "বাম দিকে", "right": "ডান দিকে", "top": "উপরে", "bottom": "নিচে", "middle": "মাঝখানে"}

    def ask_colour(self, shape: str) -> str:
        return f"{self.SHAPES[shape]}টি কোন রঙের?"

    def ask_position(self, shape: str) -> str:
        return f"{self.SHAPES[shape]}টি কোথায় আছে?"

    def ask_shape(self, position: str) -> str:
        return f"{self.POS[position]} কোন আকৃতি আছে?"

    def ask_exists(self, colour: str, shape: str) -> str:
        return f"ছবিতে কি একটি {self.COLOURS[colour]} {self.SHAPES[shape]} আছে?"


@register
class Tamil(PairStater):
    code = "ta"
    SHAPES = {"circle": "வட்டம்", "square": "சதுரம்", "triangle": "முக்கோணம்", "star": "நட்சத்திரம்"}
    COLOURS = {"red": "சிவப்பு", "green": "பச்சை", "blue": "நீல", "yellow": "மஞ்சள்", "black": "கருப்பு",
               "white": "வெள்ளை"}
    SIDES = {"left": "இடது", "right": "வலது"}

    def pair_more(self, side: str) -> str:
        return f"{self.SIDES[side]} படத்தில் {self.SIDES[other_side(side)]} படத்தை விட அதிக வடிவங்கள் உள்ளன."

    def pair_contains(self, side: str, colour: str, shape: str) -> str:
        return f"{self.SIDES[side]} படத்தில் ஒரு {self.COLOURS[colour]} {self.SHAPES[shape]} உள்ளது."

    def pair_both(self, shape: str) -> str:
        return f"இரண்டு படங்களிலும் ஒரு {self.SHAPES[shape]} உள்ளது."
