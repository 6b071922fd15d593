"""Logical axis names -> PartitionSpec (``stepjax.sharding.rules``)."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from stepjax.sharding import DEFAULT_RULES, MESH_AXES, logical_to_spec, normalize_rules


def test_each_name_maps_through_its_rule():
    rules = (("batch", "data"), ("embed", "fsdp"), ("mlp", "tensor"))
    assert logical_to_spec(("batch", "embed", "mlp"), rules) == P("data", "fsdp", "tensor")


def test_none_and_unknown_names_are_replicated():
    rules = (("embed", "fsdp"),)
    assert logical_to_spec((None, "embed", "not_a_rule"), rules) == P(None, "fsdp", None)


def test_rule_to_none_replicates():
    assert logical_to_spec(("head_dim",), (("head_dim", None),)) == P(None)


def test_first_rule_wins():
    rules = (("embed", "fsdp"), ("embed", "tensor"))
    assert logical_to_spec(("embed",), rules) == P("fsdp")
    assert logical_to_spec(("embed",), tuple(reversed(rules))) == P("tensor")


def test_mesh_axes_absent_from_the_mesh_are_dropped():
    rules = (("act_batch", ("data", "fsdp")), ("mlp", "tensor"))
    assert logical_to_spec(("act_batch", "mlp"), rules, ("data", "tensor")) == P("data", "tensor")
    # Only 'fsdp' survives: a one-axis group collapses to the bare name.
    assert logical_to_spec(("act_batch", "mlp"), rules, ("fsdp",)) == P("fsdp", None)
    # Without mesh axis names nothing is dropped.
    assert logical_to_spec(("act_batch", "mlp"), rules) == P(("data", "fsdp"), "tensor")


def test_a_mesh_axis_is_used_once_per_array():
    rules = (("heads", "tensor"), ("mlp", "tensor"), ("embed", "fsdp"))
    # The second dimension asking for 'tensor' is replicated; later dimensions still get their own axes.
    assert logical_to_spec(("heads", "mlp", "embed"), rules) == P("tensor", None, "fsdp")


def test_a_used_axis_is_removed_from_a_multi_axis_group():
    rules = (("embed", "fsdp"), ("act_batch", ("data", "fsdp")))
    assert logical_to_spec(("embed", "act_batch"), rules) == P("fsdp", "data")
    assert logical_to_spec(("act_batch", "embed"), rules) == P(("data", "fsdp"), None)


def test_multi_axis_tuples_keep_their_order():
    rules = (("act_batch", ("fsdp", "data")),)
    assert logical_to_spec(("act_batch", None), rules) == P(("fsdp", "data"), None)


def test_default_rules_on_the_full_mesh():
    names = MESH_AXES
    assert logical_to_spec(("embed", "heads", "head_dim"), DEFAULT_RULES, names) == P("fsdp", "tensor", None)
    assert logical_to_spec(("heads", "head_dim", "embed"), DEFAULT_RULES, names) == P("tensor", None, "fsdp")
    assert logical_to_spec(("vocab", "embed"), DEFAULT_RULES, names) == P("tensor", "fsdp")
    assert logical_to_spec(("layers", "embed", "mlp"), DEFAULT_RULES, names) == P(None, "fsdp", "tensor")
    assert logical_to_spec(("act_batch", "act_len", "act_embed"), DEFAULT_RULES, names) == P(
        ("data", "fsdp"), "sequence", None
    )


def test_normalize_rules_accepts_mappings_and_json_style_lists():
    from_lists = normalize_rules([["act_batch", ["data", "fsdp"]], ["embed", "fsdp"], ["norm", None]])
    assert from_lists == (("act_batch", ("data", "fsdp")), ("embed", "fsdp"), ("norm", None))
    assert normalize_rules({"embed": "fsdp", "mlp": ["tensor"]}) == (("embed", "fsdp"), ("mlp", ("tensor",)))
    assert normalize_rules(DEFAULT_RULES) == DEFAULT_RULES


def test_normalize_rules_names_a_malformed_rule():
    with pytest.raises(ValueError, match=r"\('embed', 'fsdp', 'tensor'\)"):
        normalize_rules([("embed", "fsdp", "tensor")])
