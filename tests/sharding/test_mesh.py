"""Device meshes from config (``stepjax.sharding.mesh``), on the 8 fake CPU devices."""

from __future__ import annotations

import pytest
from jax.sharding import AxisType

from stepjax.sharding import MESH_AXES, MeshConfigError, batch_axes, make_mesh, resolve_mesh_shape


def test_missing_axes_get_size_one():
    assert resolve_mesh_shape({"data": 2, "tensor": 4}, 8) == {
        "data": 2,
        "fsdp": 1,
        "sequence": 1,
        "tensor": 4,
        "expert": 1,
    }


@pytest.mark.parametrize(
    ("shape", "axis", "size"),
    [
        ({"data": -1}, "data", 8),
        ({"data": 2, "fsdp": -1}, "fsdp", 4),
        ({"fsdp": 2, "tensor": 2, "data": -1}, "data", 2),
    ],
)
def test_minus_one_fills_the_remaining_devices(shape, axis, size):
    sizes = resolve_mesh_shape(shape, 8)
    assert sizes[axis] == size
    assert sizes["data"] * sizes["fsdp"] * sizes["sequence"] * sizes["tensor"] * sizes["expert"] == 8


@pytest.mark.parametrize("shape", [{"data": 3}, {"data": 2, "tensor": 2}, {"data": 3, "fsdp": -1}, {"tensor": 16}])
def test_a_shape_that_does_not_fit_the_devices_is_named(shape):
    with pytest.raises(MeshConfigError, match=r"mesh\.shape") as err:
        resolve_mesh_shape(shape, 8)
    assert "8" in str(err.value)


def test_unknown_axis_is_named():
    with pytest.raises(MeshConfigError, match=r"unknown axes.*'model'"):
        resolve_mesh_shape({"data": 4, "model": 2}, 8)


def test_two_fill_entries_and_non_positive_sizes_are_refused():
    with pytest.raises(MeshConfigError, match="at most one -1"):
        resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(MeshConfigError, match="positive"):
        resolve_mesh_shape({"data": 0, "fsdp": -1}, 8)
    with pytest.raises(MeshConfigError, match="positive"):
        resolve_mesh_shape({"data": -2}, 8)


def test_make_mesh_has_every_axis_with_auto_types(devices):
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2, "expert": 1}
    assert mesh.axis_types == (AxisType.Auto,) * len(MESH_AXES)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_make_mesh_defaults_to_all_data(devices):
    assert dict(make_mesh().shape)["data"] == len(devices)


def test_make_mesh_on_a_device_subset(devices):
    mesh = make_mesh({"fsdp": -1}, devices=devices[2:6])
    assert dict(mesh.shape)["fsdp"] == 4
    assert [d.id for d in mesh.devices.flat] == [d.id for d in devices[2:6]]
    with pytest.raises(MeshConfigError, match=r"mesh\.shape"):
        make_mesh({"data": 8}, devices=devices[:4])


def test_batch_axes():
    assert batch_axes() == ("data", "fsdp")
