"""Rule-based step segmentation: SDN, any separator, SRW with merging, the registry, skipping bad samples."""

import logging

import pytest

from stepjax.data.step_segmentation import (
    ReflectionSegmenter,
    SegmentationError,
    Segmenter,
    SeparatorSegmenter,
    get_segmenter,
    register_segmenter,
    registered_segmenters,
    segment_batch,
)


def test_sdn_and_custom_separator():
    text = "First compute 3+5=8.\n\nThen 8+7=15.\n\n\n\nSo 15.\n"
    assert get_segmenter("sdn")(text) == ["First compute 3+5=8.", "Then 8+7=15.", "So 15."]
    assert get_segmenter("separator", separator="\n")(text) == ["First compute 3+5=8.", "Then 8+7=15.", "So 15."]
    assert SeparatorSegmenter(" | ")("a | b |  | c") == ["a", "b", "c"]


def test_srw_splits_on_reflection_words_and_merges_short_pieces():
    text = "We add 3 and 5 to get 8, then 7 more: 15. Wait, 8+7 is 15 indeed. Hmm. Alternatively count 3+5+7 = 15."
    steps = ReflectionSegmenter(min_chars=10, separator=None)(text)
    assert steps == [
        "We add 3 and 5 to get 8, then 7 more: 15.",
        "Wait, 8+7 is 15 indeed. Hmm.",  # "Hmm." (4 chars) merged into its predecessor
        "Alternatively count 3+5+7 = 15.",
    ]
    # Whole words only: "awaiting" does not split; the short first piece is merged into its successor.
    assert ReflectionSegmenter(min_chars=5, separator=None)("Ok. wait awaiting x") == ["Ok. wait awaiting x"]
    assert ReflectionSegmenter(min_chars=0, separator=None)("Ok. wait awaiting x") == ["Ok.", "wait awaiting x"]
    # Paragraph breaks split too; "but wait" is one marker, not "but" + "wait".
    assert ReflectionSegmenter(min_chars=0)("a is 1\n\nb is 2 but wait, b is 3") == [
        "a is 1",
        "b is 2",
        "but wait, b is 3",
    ]
    # Nothing is lost: the pieces hold every non-space character in order.
    assert "".join("".join(steps).split()) == "".join(text.split())


def test_registry_and_protocol():
    assert {"sdn", "separator", "srw"} <= set(registered_segmenters())
    assert isinstance(get_segmenter("srw", min_chars=3), Segmenter)
    with pytest.raises(KeyError, match="unknown segmenter 'sat'"):
        get_segmenter("sat")
    with pytest.raises(ValueError, match="already registered"):
        register_segmenter("sdn", SeparatorSegmenter)


def test_unsegmentable_text_raises_and_batch_skips(caplog):
    with pytest.raises(SegmentationError, match="no step"):
        get_segmenter("sdn")("  \n\n  ")
    with pytest.raises(SegmentationError):
        ReflectionSegmenter()("")
    with caplog.at_level(logging.WARNING):
        kept, skipped = segment_batch(["a\n\nb", "", "c"], get_segmenter("sdn"), ids=["p0", "p1", "p2"])
    assert kept == [(0, ["a", "b"]), (2, ["c"])] and skipped == [1]
    assert "index 1 (id 'p1')" in caplog.text and "skipped 1 of 3" in caplog.text


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="separator"):
        SeparatorSegmenter("")
    with pytest.raises(ValueError, match="min_chars"):
        ReflectionSegmenter(min_chars=-1)
    with pytest.raises(ValueError, match="ids has 1 entries for 2 texts"):
        segment_batch(["a", "b"], SeparatorSegmenter(), ids=["x"])
