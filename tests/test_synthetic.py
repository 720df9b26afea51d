"""Synthetic scenes: determinism, label maps that agree with the pixels, honest captions."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

from tipsv2_core.data.backgrounds import KINDS
from tipsv2_core.data.classes import CLASS_IDS, CLASS_NAMES, IGNORE_INDEX, plural
from tipsv2_core.data.palette import OBJECT_COLOURS, pattern_colour
from tipsv2_core.data.shapes import SHAPES, erode, place, rasterize
from tipsv2_core.data.synthetic import FILLS, MIN_VISIBLE, generate_scene
from tipsv2_core.data.textures import TEXTURES
from tipsv2_core.data.vocabulary import WHERE
from tipsv2_core.data.worlds import DEFAULT_WORLD, WORLDS, get_world

pytestmark = pytest.mark.unit

# Longest names first, so "lightning bolt" is found before any shorter name inside it.
_NAMES = sorted(CLASS_NAMES[1:], key=len, reverse=True)
_CLASS_RE = re.compile(
    r"\b(" + "|".join(re.escape(w) for n in _NAMES for w in (plural(n), n)) + r")\b"
)
_SINGULAR = {plural(n): n for n in CLASS_NAMES[1:]} | {n: n for n in CLASS_NAMES[1:]}


def named_classes(text: str) -> set[str]:
    return {_SINGULAR[m] for m in _CLASS_RE.findall(text.lower())}


def words(text: str) -> int:
    return len(text.split())


SHAPES26 = get_world("shapes26")
DENSE = get_world("dense")


@pytest.fixture(scope="module")
def scenes():
    """The 26-class world, whose fills and alt-texts vary independently of the class."""
    return [generate_scene(0, i, 112, "shapes26") for i in range(200)]


@pytest.fixture(scope="module")
def dense_scenes():
    return [generate_scene(0, i, 112) for i in range(300)]


def test_label_space_has_background_first_and_enough_classes():
    assert CLASS_NAMES[0] == "background"
    assert len(CLASS_NAMES) - 1 >= 20
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert all(CLASS_IDS[n] == i for i, n in enumerate(CLASS_NAMES))
    assert set(SHAPES) == set(CLASS_NAMES[1:])  # every object class can be drawn
    assert IGNORE_INDEX not in CLASS_IDS.values()
    assert SHAPES26.class_names == CLASS_NAMES
    assert DEFAULT_WORLD == "dense"
    for world in WORLDS.values():
        assert world.class_names[0] == "background"
        assert set(world.classes) <= set(SHAPES)
        assert len(set(world.classes)) == len(world.classes)
    # Every class of the dense world has a texture of its own.
    textures = [DENSE.texture_of(c) for c in DENSE.classes]
    assert len(set(textures)) == len(textures) and set(textures) <= set(TEXTURES)
    with pytest.raises(ValueError, match="unknown world 'nope'.*dense"):
        get_world("nope")


@pytest.mark.parametrize("world", sorted(WORLDS))
def test_same_seed_and_index_give_identical_scenes(world):
    a, b = generate_scene(7, 3, 112, world), generate_scene(7, 3, 112, world)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.instance, b.instance)
    assert a.captions == b.captions
    assert [o.to_json() for o in a.objects] == [o.to_json() for o in b.objects]
    assert not np.array_equal(a.image, generate_scene(8, 3, 112, world).image)
    assert not np.array_equal(a.image, generate_scene(7, 4, 112, world).image)


@pytest.mark.parametrize("size", [112, 448])
def test_supported_sizes(size):
    s = generate_scene(0, 1, size)
    assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
    assert s.label.shape == (size, size) and s.label.dtype == np.uint8
    assert s.objects


@pytest.mark.parametrize("size", [100, 449, 0])
def test_unsupported_sizes_are_refused_by_value(size):
    with pytest.raises(ValueError, match=rf"\b{size}\b"):
        generate_scene(0, 0, size)


def test_label_and_instance_maps_agree_with_the_pixels(scenes):
    for s in scenes:
        assert 1 <= len(s.objects) <= 5
        # Pixels outside every object are background or ignored clutter, never a class.
        assert set(np.unique(s.label[s.instance == 0])) <= {0, IGNORE_INDEX}
        assert s.instance.max() == len(s.objects)
        for k, o in enumerate(s.objects):
            mine = s.instance == k + 1
            assert o.pixels == mine.sum() > 0
            assert (s.label[mine] == CLASS_IDS[o.class_name]).all()
            colours = s.image[mine]
            is_main = (colours == o.rgb).all(axis=1)
            if o.fill in ("solid", "outline"):
                assert is_main.all(), (s.index, k, o.fill)
            else:  # the pattern alternates the colour with its tint/shade, colour dominant
                second = (colours == pattern_colour(o.rgb)).all(axis=1)
                assert (is_main | second).all() and is_main.mean() > 0.35
            jitter = np.subtract(o.rgb, OBJECT_COLOURS[o.colour])
            assert np.abs(jitter).max() <= 10
            ys, xs = np.nonzero(mine)
            assert o.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert sorted(s.classes) == sorted({o.class_name for o in s.objects})


def test_objects_stay_visible_and_occlusion_is_accounted(scenes):
    occluded = 0
    for s in scenes:
        for k, o in enumerate(s.objects):
            assert o.visible_fraction >= MIN_VISIBLE
            area = o.pixels + sum(o.occluded_by.values())
            assert round(o.pixels / o.visible_fraction) == area
            assert all(j > k for j in o.occluded_by)  # only later objects cover earlier ones
            occluded += bool(o.occluded_by)
    assert occluded >= 10


def test_attributes_vary_independently(scenes):
    objs = [o for s in scenes for o in s.objects]
    assert {o.fill for o in objs} == set(FILLS)
    assert {o.size for o in objs} == set(dict(SHAPES26.sizes))
    assert len({o.colour for o in objs}) >= 10
    assert len({o.class_name for o in objs}) >= 20
    assert {s.background_kind for s in scenes} == set(KINDS)
    assert set(Counter(len(s.objects) for s in scenes)) == {1, 2, 3, 4, 5}
    assert len({round(o.rotation) for o in objs}) > 50
    assert sum(s.clutter > 0 for s in scenes) > 100
    assert (np.concatenate([s.label.ravel() for s in scenes]) == IGNORE_INDEX).any()


def test_captions_name_only_visible_objects(scenes):
    for s in scenes:
        present = set(s.classes)
        medium, long = s.captions["caption_medium"], s.captions["caption_long"]
        assert named_classes(medium) == present, medium
        assert named_classes(long) == present, long
        assert named_classes(s.captions["alt_text"]) <= present
        assert all(o.colour in medium for o in s.objects)


def test_caption_lengths_grow_with_granularity(scenes):
    mean = {f: np.mean([words(s.captions[f]) for s in scenes]) for f in scenes[0].captions}
    assert mean["alt_text"] < mean["caption_medium"] < mean["caption_long"]
    assert max(words(s.captions["caption_long"]) for s in scenes) <= 60


def test_captions_vary_in_wording(scenes):
    for field in ("caption_medium", "caption_long"):
        openings = {" ".join(s.captions[field].split()[:2]).lower() for s in scenes}
        assert len(openings) >= 6, (field, openings)
    alts = [s.captions["alt_text"] for s in scenes]
    noisy = [
        a for a in alts if re.search(r"img_|dsc|stock photo|wallpaper|download|clipart", a, re.I)
    ]
    assert 10 <= len(noisy) < len(alts) // 2
    partial = sum(len(named_classes(a)) < len(s.classes) for a, s in zip(alts, scenes, strict=True))
    assert partial > 50  # alt-text names only some of the objects
    wrong = 0
    for a, s in zip(alts, scenes, strict=True):
        named = {c for c in OBJECT_COLOURS if re.search(rf"\b{c}\b", a.lower())}
        wrong += bool(named - {o.colour for o in s.objects})
    assert 1 <= wrong <= 40  # now and then a wrong colour, like real alt-text


def test_long_captions_give_positions_relations_and_background(scenes):
    for s in scenes:
        long = s.captions["caption_long"].lower()
        for o in s.objects:
            assert any(p in long for p in WHERE[o.position]), (o.position, long)
    longs = " ".join(s.captions["caption_long"] for s in scenes)
    assert re.search(r"to the (left|right) of|is (above|below)", longs)
    assert re.search(r"hidden behind|covers|overlaps|occluded by", longs)
    assert re.search(r"\b(two|three) [a-z ]+s\b", longs)  # counts


def test_shapes_are_normalised_and_outlines_lie_inside_fills():
    for name, spec in SHAPES.items():
        pts = np.concatenate([p for p, add in spec.parts if add])
        assert np.abs(pts).max() == pytest.approx(1.0), name
        parts = place(spec, 60.0, 60.0, 40.0, 30.0, spec.flippable)
        filled, outline = rasterize(parts), rasterize(parts, stroke=4)
        assert filled.mask.sum() > 0.15 * 80 * 80, name
        # Same canvas origin only differs by the stroke padding.
        dy, dx = filled.y0 - outline.y0, filled.x0 - outline.x0
        inner = outline.mask[dy : dy + filled.mask.shape[0], dx : dx + filled.mask.shape[1]]
        assert outline.mask.sum() == inner.sum() and (inner <= filled.mask).all(), name
        assert 0 < outline.mask.sum() < filled.mask.sum(), name


def test_erode_matches_a_brute_force_minimum():
    rng = np.random.default_rng(0)
    mask = rng.random((30, 40)) < 0.8
    for r in (1, 2, 3):
        padded = np.pad(mask, r)
        expect = np.ones_like(mask)
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                expect &= padded[r + dy : r + dy + 30, r + dx : r + dx + 40]
        np.testing.assert_array_equal(erode(mask, r), expect)


def test_dense_world_label_maps_agree_with_class_textures(dense_scenes):
    """Each object's pixels are its colour and that colour's tint/shade, laid out in its
    class's texture; the label map and the instance map agree with the drawn pixels."""
    for s in dense_scenes:
        assert 1 <= len(s.objects) <= len(DENSE.count_weights)
        assert set(np.unique(s.label[s.instance == 0])) <= {0, IGNORE_INDEX}
        for k, o in enumerate(s.objects):
            mine = s.instance == k + 1
            assert (s.label[mine] == DENSE.class_ids[o.class_name]).all()
            assert o.texture == DENSE.texture_of(o.class_name) and o.fill == "solid"
            colours = s.image[mine]
            is_main = (colours == o.rgb).all(axis=1)
            second = (colours == pattern_colour(o.rgb)).all(axis=1)
            assert (is_main | second).all()
            if o.texture == "plain":
                assert is_main.all()
            elif o.pixels > 400:  # a large enough part of the texture to show both colours
                assert 0.2 < second.mean() < 0.8, (s.index, k, o.texture, second.mean())
        assert s.classes == sorted(s.classes, key=DENSE.class_ids.get)


def test_dense_world_keeps_colour_independent_of_class(dense_scenes):
    """No colour tells the class: every frequent class is drawn in many colours, and the
    most common colour of a class is never a large share of it."""
    objs = [o for s in dense_scenes for o in s.objects]
    assert {o.class_name for o in objs} == set(DENSE.classes)
    by_class: dict[str, Counter] = {}
    for o in objs:
        by_class.setdefault(o.class_name, Counter())[o.colour] += 1
    for name, colours in by_class.items():
        n = sum(colours.values())
        assert len(colours) >= 6, (name, colours)
        assert colours.most_common(1)[0][1] / n < 0.35, (name, colours)
    kinds = {s.background_kind for s in dense_scenes}
    assert kinds == {k for k, _ in DENSE.backgrounds}


def test_dense_world_captions_name_every_class_and_no_colour(dense_scenes):
    """Classes are the strongest text signal: every caption names every visible class,
    the alt-text nothing else, and no caption names a colour (of an object or of the
    background) or a texture."""
    colour_words = set(OBJECT_COLOURS) | {"pale", "beige", "cream", "lavender", "navy"}
    for s in dense_scenes:
        alt = s.captions["alt_text"].lower()
        assert named_classes(alt) in (set(s.classes), set()), (alt, s.classes)  # set(): a file name
        for field in ("caption_medium", "caption_long"):
            text = s.captions[field].lower()
            assert named_classes(text) == set(s.classes), text
            assert "  " not in text, text
        for text in s.captions.values():
            words = set(re.findall(r"[a-z]+", text.lower()))
            assert not words & colour_words, text
            assert not words & {"striped", "dotted", "spotted", "checkered", "hollow"}, text
    assert sum(not named_classes(s.captions["alt_text"]) for s in dense_scenes) < 30
