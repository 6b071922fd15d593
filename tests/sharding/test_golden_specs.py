"""The tiny LM's parameter PartitionSpecs under ``DEFAULT_RULES`` on a (data=2, fsdp=2, tensor=2) mesh, against
``golden/tiny_param_specs.json``.

A change to the rules, to a layer's ``logical_axes`` or to the parameter tree shows up here as a diff. If the change
is intended, regenerate with ``STEPJAX_UPDATE_GOLDEN=1 pytest tests/sharding/test_golden_specs.py`` and review the
diff of the JSON file before committing it.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

from flax import nnx

from stepjax.models.llm import DecoderLM, llm_preset
from stepjax.sharding import DEFAULT_RULES, make_mesh, spec_table

GOLDEN = Path(__file__).parent / "golden" / "tiny_param_specs.json"
MESH_SHAPE = {"data": 2, "fsdp": 2, "tensor": 2}


def current_tables(mesh) -> dict[str, dict[str, str]]:
    tables = {}
    for name, scan in (("tiny", False), ("tiny_scan_layers", True)):
        cfg = llm_preset("tiny", scan_layers=scan)
        abstract = nnx.eval_shape(lambda cfg=cfg: DecoderLM(cfg, rngs=nnx.Rngs(0)))  # shapes only, no compute
        tables[name] = spec_table(nnx.state(abstract, nnx.Param), DEFAULT_RULES, mesh)
    return tables


def test_param_specs_match_golden(devices):
    mesh = make_mesh(MESH_SHAPE)
    current = {"mesh": MESH_SHAPE, "rules": "DEFAULT_RULES", "specs": current_tables(mesh)}
    text = json.dumps(current, indent=1, sort_keys=True) + "\n"
    if os.environ.get("STEPJAX_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
    golden = GOLDEN.read_text()
    if golden != text:
        diff = "".join(difflib.unified_diff(golden.splitlines(True), text.splitlines(True), str(GOLDEN), "current"))
        print(diff)
        raise AssertionError(f"parameter specs differ from {GOLDEN.name} (STEPJAX_UPDATE_GOLDEN=1 rewrites):\n{diff}")


def test_golden_specs_are_the_intended_layout():
    """Spot checks of the golden file itself, written from the rules by hand (not from the code under test)."""
    specs = json.loads(GOLDEN.read_text())["specs"]
    loop, scan = specs["tiny"], specs["tiny_scan_layers"]
    expected = {
        "attn/q_proj/kernel": "P('fsdp', 'tensor', None)",  # [embed, heads, head_dim]
        "attn/k_proj/kernel": "P('fsdp', 'tensor', None)",  # [embed, kv_heads, head_dim]
        "attn/o_proj/kernel": "P('tensor', None, 'fsdp')",  # [heads, head_dim, embed]
        "mlp/gate_proj/kernel": "P('fsdp', 'tensor')",  # [embed, mlp]
        "mlp/down_proj/kernel": "P('tensor', 'fsdp')",  # [mlp, embed]
        "input_norm/scale": "P(None,)",  # [norm]
    }
    for suffix, spec in expected.items():
        assert loop[f"layers/0/{suffix}"] == spec
        assert loop[f"layers/1/{suffix}"] == spec
        # Scan-stacked parameters gain a leading, unsharded 'layers' dimension.
        assert scan[f"layers/{suffix}"] == spec.replace("P(", "P(None, ").replace(",)", ")")
    assert loop["embed/embedding"] == "P('tensor', 'fsdp')"  # [vocab, embed]
    assert loop["lm_head/kernel"] == "P('fsdp', 'tensor')"  # [embed, vocab]
    assert len(loop) == 2 + 2 * 9 + 1  # embed, lm_head, final_norm + 9 per layer (2 norms, q k v o, 3 mlp)
