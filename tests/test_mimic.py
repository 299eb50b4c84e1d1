"""Reading and validating Mimic HDF5: every bad input gives one error naming file, demo and key."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from posttrain.errors import PosttrainError
from posttrain.mimic import MimicFile, is_plain_deflate, read_deflate_chunks

STATE, ACTION, CAMERA = "obs/robot_joint_pos", "processed_actions", "camera_obs/robot_pov_cam_rgb"


def write_file(path: Path, demos: dict[str, int] | None = None, breaker=None, size: int = 8) -> Path:
    """A small valid Mimic file (demo name -> T); `breaker(data_group)` then damages one thing."""
    demos = {"demo_0": 5, "demo_1": 6} if demos is None else demos
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = '{"env_name": "test", "type": 2}'
        data.attrs["total"] = sum(demos.values())
        for name, t in demos.items():
            demo = data.create_group(name)
            demo.attrs["num_samples"] = t
            demo.create_dataset("actions", data=rng.normal(size=(t, 12)).astype(np.float32))
            demo.create_dataset(ACTION, data=rng.normal(size=(t, 36)).astype(np.float32), compression="gzip")
            demo.create_dataset(STATE, data=rng.normal(size=(t, 54)).astype(np.float32), compression="gzip")
            demo.create_dataset("obs/left_eef_pos", data=np.zeros((t, 3), np.float32))
            demo.create_dataset(CAMERA, data=rng.integers(0, 256, (t, size, size, 3), dtype=np.uint8))
        if breaker is not None:
            breaker(data)
    return path


def replace(group: h5py.Group, key: str, values) -> None:
    del group[key]
    group.create_dataset(key, data=values)


def check_error(path: Path, *fragments: str, **check_kwargs) -> str:
    with MimicFile(path) as mimic, pytest.raises(PosttrainError) as info:
        mimic.check(**check_kwargs)
    message = str(info.value)
    assert message.startswith(f"{path.name}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message
    return message


def test_valid_file_reads(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    with MimicFile(path) as mimic:
        assert mimic.check() == {"demo_0": 5, "demo_1": 6}
        assert mimic.length("demo_1") == 6
        assert mimic.env_args == {"env_name": "test", "type": 2}
        assert mimic.demo_attrs("demo_0")["num_samples"] == 5
        state, action = mimic.read_state_action("demo_1")
        assert state.dtype == action.dtype == np.float32
        assert state.shape == (6, 54) and action.shape == (6, 36)
        np.testing.assert_array_equal(state, mimic.file["data/demo_1/obs/robot_joint_pos"][()])
        assert mimic.camera_shape("demo_0", "robot_pov_cam_rgb") == (5, 8, 8, 3)
    assert mimic.file is None, "the context manager closes the file"


def test_demos_sorted_numerically(tmp_path):
    path = write_file(tmp_path / "demos.hdf5", {f"demo_{i}": 3 for i in (10, 2, 0, 1, 11)})
    with MimicFile(path) as mimic:
        assert mimic.demos == ["demo_0", "demo_1", "demo_2", "demo_10", "demo_11"]
        assert list(mimic.check()) == mimic.demos


def test_iter_camera_frames_streams_in_batches(tmp_path):
    path = write_file(tmp_path / "demos.hdf5", {"demo_0": 11})
    with MimicFile(path) as mimic:
        every = mimic.file["data/demo_0/camera_obs/robot_pov_cam_rgb"][()]
        batches = list(mimic.iter_camera_frames("demo_0", "robot_pov_cam_rgb", batch=4))
        assert [len(b) for b in batches] == [4, 4, 3]
        assert all(b.dtype == np.uint8 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), every)
        part = np.concatenate(list(mimic.iter_camera_frames("demo_0", "robot_pov_cam_rgb", 1, 10, batch=32)))
        np.testing.assert_array_equal(part, every[1:10])
        with pytest.raises(
            PosttrainError,
            match=r"demos\.hdf5: data/demo_0/camera_obs/robot_pov_cam_rgb: "
            r"frame range \[0, 12\) outside \[0, 11\)",
        ):
            next(mimic.iter_camera_frames("demo_0", "robot_pov_cam_rgb", 0, 12))
        np.testing.assert_array_equal(
            mimic.read_camera_frames("demo_0", "robot_pov_cam_rgb", [9, 0, 9]), every[[9, 0, 9]]
        )
        with pytest.raises(
            PosttrainError,
            match=r"demos\.hdf5: data/demo_0/camera_obs/robot_pov_cam_rgb: "
            r"frame index 11 outside \[0, 11\)",
        ):
            mimic.read_camera_frames("demo_0", "robot_pov_cam_rgb", [1, 11])


def test_float64_is_accepted_and_cast(tmp_path):
    path = write_file(
        tmp_path / "demos.hdf5", breaker=lambda d: replace(d["demo_1"], STATE, np.full((6, 54), 0.1, np.float64))
    )
    with MimicFile(path) as mimic:
        assert mimic.check()["demo_1"] == 6
        state, _ = mimic.read_state_action("demo_1")
        assert state.dtype == np.float32 and np.allclose(state, 0.1)


def test_wrong_state_key_lists_existing_keys(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    check_error(
        path,
        "data/demo_0/obs/joint_pos: missing; data/demo_0/obs has: left_eef_pos, robot_joint_pos",
        state_key="obs/joint_pos",
    )


def test_wrong_action_key_lists_existing_keys(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    check_error(
        path,
        "data/demo_0/processed_action: missing; data/demo_0 has:",
        "processed_actions",
        "camera_obs",
        action_key="processed_action",
    )


def test_key_that_is_a_group(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    check_error(path, "data/demo_0/obs: is a group", "expected a dataset", state_key="obs")


def test_wrong_camera_name(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    check_error(
        path,
        "data/demo_0/camera_obs/robot_head_cam: missing; data/demo_0/camera_obs has: robot_pov_cam_rgb",
        cameras=["robot_head_cam"],
    )


DAMAGES = {
    "missing camera group": (
        lambda d: d["demo_1"].__delitem__("camera_obs"),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb: missing", "--enable_cameras"],
    ),
    "state shorter than action": (
        lambda d: replace(d["demo_1"], STATE, np.zeros((5, 54), np.float32)),
        ["data/demo_1/obs/robot_joint_pos: 5 rows, but processed_actions has 6"],
    ),
    "camera length": (
        lambda d: replace(d["demo_1"], CAMERA, np.zeros((7, 8, 8, 3), np.uint8)),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb: 7 frames, but the action has 6 rows"],
    ),
    "NaN in state": (
        lambda d: d["demo_1"][STATE].__setitem__((3, 7), np.nan),
        ["data/demo_1/obs/robot_joint_pos: NaN at row 3, column 7"],
    ),
    "inf in action": (
        lambda d: d["demo_1"][ACTION].__setitem__((4, 0), -np.inf),
        ["data/demo_1/processed_actions: inf at row 4, column 0"],
    ),
    "int state": (
        lambda d: replace(d["demo_1"], STATE, np.zeros((6, 54), np.int32)),
        ["data/demo_1/obs/robot_joint_pos: dtype int32, expected float32"],
    ),
    "wrong state width": (
        lambda d: replace(d["demo_1"], STATE, np.zeros((6, 53), np.float32)),
        ["data/demo_1/obs/robot_joint_pos: shape (6, 53), expected (T, 54)"],
    ),
    "3-D action": (
        lambda d: replace(d["demo_1"], ACTION, np.zeros((6, 36, 1), np.float32)),
        ["data/demo_1/processed_actions: shape (6, 36, 1), expected (T, 36)"],
    ),
    "float camera": (
        lambda d: replace(d["demo_1"], CAMERA, np.zeros((6, 8, 8, 3), np.float32)),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb: dtype float32, expected uint8"],
    ),
    "grey camera": (
        lambda d: replace(d["demo_1"], CAMERA, np.zeros((6, 8, 8), np.uint8)),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb: shape (6, 8, 8), expected (T, H, W, 3)"],
    ),
    "odd frame size": (
        lambda d: replace(d["demo_1"], CAMERA, np.zeros((6, 7, 8, 3), np.uint8)),
        ["data/demo_1/camera_obs/robot_pov_cam_rgb: frame size 7x8", "even"],
    ),
    "num_samples mismatch": (
        lambda d: d["demo_1"].attrs.__setitem__("num_samples", 9),
        ["data/demo_1: attr num_samples=9, but processed_actions has 6 rows"],
    ),
    "dataset beside the demos": (
        lambda d: d.create_dataset("mask", data=np.zeros(3)),
        ["data/mask: expected a demo group, found a dataset"],
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_demo_is_reported(tmp_path, damage):
    breaker, fragments = DAMAGES[damage]
    path = write_file(tmp_path / "demos.hdf5", breaker=breaker)
    check_error(path, *fragments)


@pytest.mark.parametrize("length", [0, 1])
def test_too_short_demo(tmp_path, length):
    path = write_file(tmp_path / "demos.hdf5", {"demo_0": 4, "demo_7": length})
    check_error(path, f"data/demo_7/processed_actions: {length} rows: a demo needs at least 2 recorded steps")


def test_read_state_action_checks_values(tmp_path):
    path = write_file(tmp_path / "demos.hdf5", breaker=lambda d: d["demo_0"][ACTION].__setitem__((2, 5), np.nan))
    with (
        MimicFile(path) as mimic,
        pytest.raises(PosttrainError, match=r"^demos\.hdf5: data/demo_0/processed_actions: NaN at row 2"),
    ):
        mimic.read_state_action("demo_0")


def test_no_demos(tmp_path):
    path = write_file(tmp_path / "demos.hdf5", {})
    check_error(path, "data: no demos")


def test_no_data_group(tmp_path):
    path = tmp_path / "demos.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("mask")
    with pytest.raises(PosttrainError, match=r"^demos\.hdf5: data: group missing \(the file has: mask\)"):
        MimicFile(path)


def test_unknown_demo(tmp_path):
    path = write_file(tmp_path / "demos.hdf5")
    message = r"demos\.hdf5: data/demo_5: no such demo \(demos: demo_0, demo_1\)"
    with MimicFile(path) as mimic, pytest.raises(PosttrainError, match=message):
        mimic.length("demo_5")


def test_truncated_file(tmp_path):
    path = write_file(tmp_path / "demos.hdf5", {"demo_0": 40}, size=32)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(PosttrainError, match=r"demos\.hdf5: not a readable HDF5 file \(.*trunc"):
        MimicFile(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "demos.hdf5"
    path.write_text("this is not an HDF5 file\n")
    with pytest.raises(PosttrainError, match=r"demos\.hdf5: not a readable HDF5 file"):
        MimicFile(path)


def test_missing_file(tmp_path):
    with pytest.raises(PosttrainError, match=r"nothing\.hdf5: not a readable HDF5 file \(no such file\)"):
        MimicFile(tmp_path / "nothing.hdf5")


def test_stale_total_is_a_warning_not_an_error(tmp_path, caplog):
    path = write_file(tmp_path / "demos.hdf5", breaker=lambda d: d.attrs.__setitem__("total", 99))
    with MimicFile(path) as mimic:
        assert mimic.check() == {"demo_0": 5, "demo_1": 6}
    assert "demos.hdf5: data: attr total=99 but the demos hold 11 samples" in caplog.text


@pytest.mark.parametrize(
    "chunks, filters, direct",
    [
        ((1, 8, 8, 3), {"compression": "gzip"}, True),  # one frame per chunk
        ((3, 5, 6, 3), {"compression": "gzip"}, True),  # tiles with partial edge chunks
        (True, {"compression": "gzip"}, True),  # h5py's guess, as Isaac Lab writes it
        ((2, 8, 8, 3), {"compression": "gzip", "shuffle": True}, False),  # another filter pipeline
        ((2, 8, 8, 3), {}, False),  # chunked, uncompressed
    ],
)
def test_streamed_frames_equal_h5py_reads_for_any_chunk_layout(tmp_path, chunks, filters, direct):
    """Frames inflated from the raw chunks (ISA-L) equal what h5py reads, for any chunk layout."""
    frames = np.random.default_rng(1).integers(0, 256, (11, 8, 8, 3), dtype=np.uint8)

    def store(data):
        del data["demo_0"][CAMERA]
        data["demo_0"].create_dataset(CAMERA, data=frames, chunks=chunks, **filters)

    path = write_file(tmp_path / "demos.hdf5", {"demo_0": 11}, breaker=store)
    with MimicFile(path) as mimic:
        assert is_plain_deflate(mimic.dataset("demo_0", CAMERA)) == direct
        for start, stop, batch in [(0, 11, 4), (2, 9, 3), (5, 6, 1), (10, 11, 32)]:
            got = np.concatenate(list(mimic.iter_camera_frames("demo_0", "robot_pov_cam_rgb", start, stop, batch)))
            np.testing.assert_array_equal(got, frames[start:stop])
            if direct:  # the fast path itself, not its h5py fallback
                np.testing.assert_array_equal(
                    read_deflate_chunks(mimic.dataset("demo_0", CAMERA), start, stop), frames[start:stop]
                )


def _extra_dataset(key, values):
    return lambda data: data["demo_1"].create_dataset(key, data=values)


@pytest.mark.parametrize(
    "breaker, fragments",
    [
        (None, ["data/demo_0/action/navigate_cmd: missing; data/demo_0 has: actions, camera_obs, obs"]),
        (
            _extra_dataset("action/navigate_cmd", np.zeros((6, 2), np.float32)),
            ["data/demo_1/action/navigate_cmd: shape (6, 2), expected (T, 3)"],
        ),
        (
            _extra_dataset("action/navigate_cmd", np.zeros((5, 3), np.float32)),
            ["data/demo_1/action/navigate_cmd: 5 rows, but the action has 6"],
        ),
        (
            _extra_dataset("action/navigate_cmd", np.full((6, 3), np.inf)),
            ["data/demo_1/action/navigate_cmd: inf at row 0, column 0"],
        ),
        (
            _extra_dataset("action/navigate_cmd", np.zeros((6, 3), np.int64)),
            ["data/demo_1/action/navigate_cmd: dtype int64"],
        ),
    ],
)
def test_extra_datasets_are_checked_like_the_state(tmp_path, breaker, fragments):
    def add_to_demo_0(data):
        data["demo_0"].create_dataset("action/navigate_cmd", data=np.zeros((5, 3), np.float32))
        if breaker is not None:
            breaker(data)

    path = write_file(tmp_path / "demos.hdf5", breaker=add_to_demo_0 if breaker else None)
    check_error(path, *fragments, extra={"obs/left_eef_pos": 3, "action/navigate_cmd": 3})


def test_read_matrix_keeps_float64(tmp_path):
    precise = np.linspace(0, 1, 15).reshape(5, 3)  # float64, not float32 values
    path = write_file(
        tmp_path / "demos.hdf5", {"demo_0": 5}, breaker=lambda d: replace(d["demo_0"], "obs/left_eef_pos", precise)
    )
    with MimicFile(path) as mimic:
        assert mimic.check(extra={"obs/left_eef_pos": 3}) == {"demo_0": 5}
        values = mimic.read_matrix("demo_0", "obs/left_eef_pos", 3)
        assert values.dtype == np.float64 and np.array_equal(values, precise)
        assert mimic.read_matrix("demo_0", STATE, 54).dtype == np.float32
