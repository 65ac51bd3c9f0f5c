"""Captions and prompts are English: "an orange square", never "a orange square" (issue 16)."""

from __future__ import annotations

import re

from dvdm.data.base import ClipSpec
from dvdm.data.synthetic import COLORS, DIRECTIONS, SHAPES, SPEEDS, SyntheticSource, describe
from dvdm.evaluate.prompt_swap import swap_prompts

WRONG_ARTICLE = re.compile(r"\ba [aeiou]|\ban [^aeiou\W]", re.IGNORECASE)


def test_every_caption_wording_has_the_right_article():
    captions = [describe(c, s, sp, d) for c in COLORS for s in SHAPES for sp in range(len(SPEEDS))
                for d in range(len(DIRECTIONS))]
    assert [c for c in captions if WRONG_ARTICLE.search(c)] == []
    assert describe("orange", "square", 0, 0) == "an orange square moves slowly up"
    assert describe("red", "circle", 2, 7) == "a red circle moves quickly down and to the right"


def test_generated_clips_and_evaluation_prompts_say_an_orange():
    clips = list(SyntheticSource(ClipSpec(frames=8, height=64, width=64), num_train=40, num_val=0, num_test=0,
                                 seed=0, second_object_prob=0.5))
    assert any("an orange" in c.caption for c in clips), "no orange object drawn: pick another seed"
    assert [c.caption for c in clips if WRONG_ARTICLE.search(c.caption)] == []
    prompts = [p.text for p in swap_prompts("orange", "triangle")]
    assert len(prompts) == len(DIRECTIONS) * len(SPEEDS)
    assert all(p.startswith("an orange triangle moves ") for p in prompts)
