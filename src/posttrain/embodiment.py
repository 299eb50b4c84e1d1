"""Joint maps of an embodiment: sim state/action columns -> the policy's joint layout, by NAME.

An embodiment directory (`config/embodiments/<name>/`) holds, as in IsaacLab-Arena:

    54dof_joint_space.yaml        `joints: {name: column}` of the sim state (obs/robot_joint_pos)
    36dof_joint_space.yaml        `joints: {name: column}` of the sim action (processed_actions)
    gr00t_26dof_joint_space.yaml  `joints: {group: [names in policy order]}`
    modality.json                 group -> [start, end) slice of the policy vector
    info.json                     LeRobot info.json template

and optionally our own `embodiment.yaml` (see config/embodiments/g1/): other joint-map file names
(`joint_maps`), the info.json `robot_type`, the default `cameras`, and extra parquet `columns`
(e.g. G1's end-effector poses and teleop commands), each the concatenation of HDF5 datasets of the
demo. Extra columns are data, not code: the converter writes whatever an embodiment declares.
modality.json groups whose `original_key` is such a column slice that column, not the joints.

The policy vector is the concatenation of the joint groups in the key order of `modality.json["state"]`.
The mapping is pure selection by joint name: the position of a name in a sim YAML never matters,
only the column number written beside it. Sim joints the policy does not list are dropped
(and zero-filled on the way back, as Arena's `remap_policy_joints_to_sim_joints_np` does).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml

from posttrain.errors import PosttrainError

EMBODIMENTS_DIR = Path(__file__).resolve().parents[2] / "config" / "embodiments"
STATE_YAML = "54dof_joint_space.yaml"
ACTION_YAML = "36dof_joint_space.yaml"
POLICY_YAML = "gr00t_26dof_joint_space.yaml"
MODALITY_JSON = "modality.json"
INFO_JSON = "info.json"
DESCRIPTION_YAML = "embodiment.yaml"
DEFAULT_JOINT_MAPS = {"state": STATE_YAML, "action": ACTION_YAML, "policy": POLICY_YAML}
SECTION_COLUMNS = {"state": "observation.state", "action": "action"}  # modality.json section -> joint column
COLUMN_DTYPES = ("float32", "float64")
# Columns every conversion writes itself: an embodiment may not declare them again.
FIXED_COLUMNS = (
    "observation.state",
    "action",
    "timestamp",
    "episode_index",
    "task_index",
    "index",
    "frame_index",
    "next.reward",
    "next.done",
    "observation.img_state_delta",
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key written twice (plain YAML silently keeps the last one)."""


def _mapping_without_duplicates(loader, node, deep=False):
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate key(s) {dupes}", node.start_mark)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _load_yaml(path: Path, what: str = "") -> object:
    """A YAML file with duplicate keys refused; unreadable or invalid YAML is one line naming it."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as err:
        raise PosttrainError(f"{path}: cannot read {what}({err.strerror})") from None
    except yaml.YAMLError as err:
        raise PosttrainError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None


def _read_yaml(path: Path) -> dict:
    data = _load_yaml(path, "joint map ")
    if not isinstance(data, dict) or not isinstance(data.get("joints"), dict) or not data["joints"]:
        raise PosttrainError(f"{path}: expected a non-empty `joints:` mapping")
    return data


def _read_sim_map(path: Path) -> tuple[dict[str, int], int]:
    """`{joint name: column}` and the number of columns (`total_joints`, else max column + 1)."""
    data = _read_yaml(path)
    joints: dict[str, int] = {}
    for name, column in data["joints"].items():
        if not isinstance(column, int) or isinstance(column, bool) or column < 0:
            raise PosttrainError(f"{path}: joint {name}: column must be a non-negative integer, got {column!r}")
        joints[str(name)] = column
    by_column: dict[int, str] = {}
    for name, column in joints.items():
        if column in by_column:
            raise PosttrainError(f"{path}: joints {by_column[column]} and {name} share column {column}")
        by_column[column] = name
    total = data.get("total_joints", max(joints.values()) + 1)
    if not isinstance(total, int) or total <= max(joints.values()):
        raise PosttrainError(f"{path}: total_joints {total!r} does not cover column {max(joints.values())}")
    return joints, total


def _read_policy_groups(path: Path) -> dict[str, list[str]]:
    data = _read_yaml(path)
    groups: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for group, names in data["joints"].items():
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise PosttrainError(f"{path}: group {group}: expected a non-empty list of joint names")
        for name in names:
            if name in seen:
                raise PosttrainError(f"{path}: joint {name} listed twice (groups {seen[name]} and {group})")
            seen[name] = group
        groups[str(group)] = list(names)
    return groups


def _read_modality(path: Path) -> dict:
    try:
        with open(path) as f:
            modality = json.load(f)
    except OSError as err:
        raise PosttrainError(f"{path}: cannot read modality file ({err.strerror})") from None
    except json.JSONDecodeError as err:
        raise PosttrainError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(modality, dict):
        raise PosttrainError(f"{path}: expected a JSON object")
    return modality


@dataclass(frozen=True)
class ColumnPart:
    """One HDF5 dataset of an extra column: `key` under the demo group, (T, width)."""

    key: str
    width: int
    arena: str | None = None  # the Arena converter YAML key that names the dataset (its last path part)


@dataclass(frozen=True)
class ExtraColumn:
    """A parquet column beyond state and action: its parts concatenated along the last axis."""

    name: str
    dtype: str  # float32 or float64
    parts: tuple[ColumnPart, ...]

    @property
    def width(self) -> int:
        return sum(part.width for part in self.parts)


def _read_description(path: Path) -> dict:
    """embodiment.yaml as {joint_maps, robot_type, cameras, columns}, checked (see the module doc)."""
    data = _load_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise PosttrainError(f"{path}: expected a mapping")
    unknown = sorted(set(data) - {"joint_maps", "robot_type", "cameras", "columns"})
    if unknown:
        raise PosttrainError(f"{path}: unknown key {unknown[0]!r} (joint_maps, robot_type, cameras, columns)")
    joint_maps = data.get("joint_maps") or {}
    if (
        not isinstance(joint_maps, dict)
        or set(joint_maps) - set(DEFAULT_JOINT_MAPS)
        or not all(isinstance(v, str) and v for v in joint_maps.values())
    ):
        raise PosttrainError(f"{path}: joint_maps: expected file names for {', '.join(DEFAULT_JOINT_MAPS)}")
    robot_type = data.get("robot_type")
    if robot_type is not None and not isinstance(robot_type, str):
        raise PosttrainError(f"{path}: robot_type: expected a string, got {robot_type!r}")
    cameras = data.get("cameras")
    if cameras is not None and (
        not isinstance(cameras, dict)
        or not cameras
        or not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in cameras.items())
    ):
        raise PosttrainError(f"{path}: cameras: expected a mapping camera_obs name -> video key")
    columns = data.get("columns") or {}
    if not isinstance(columns, dict):
        raise PosttrainError(f"{path}: columns: expected a mapping column name -> {{dtype, parts}}")
    return {
        "joint_maps": dict(DEFAULT_JOINT_MAPS, **joint_maps),
        "robot_type": robot_type,
        "cameras": dict(cameras) if cameras else None,
        "columns": tuple(_read_column(path, name, spec) for name, spec in columns.items()),
    }


def _read_column(path: Path, name, spec) -> ExtraColumn:
    where = f"{path}: columns.{name}"
    if not isinstance(name, str) or name in FIXED_COLUMNS or name.startswith(("annotation.", "observation.images.")):
        raise PosttrainError(f"{where}: a column every conversion writes itself (or a video/annotation key)")
    if not isinstance(spec, dict) or set(spec) != {"dtype", "parts"}:
        raise PosttrainError(f"{where}: expected exactly the keys dtype and parts")
    if spec["dtype"] not in COLUMN_DTYPES:
        raise PosttrainError(f"{where}: dtype {spec['dtype']!r}, expected one of {', '.join(COLUMN_DTYPES)}")
    parts = spec["parts"]
    if not isinstance(parts, list) or not parts:
        raise PosttrainError(f"{where}: parts: expected a non-empty list of {{key, width[, arena]}}")
    out = []
    for i, part in enumerate(parts):
        ok = isinstance(part, dict) and {"key", "width"} <= set(part) <= {"key", "width", "arena"}
        key, width, arena = (part.get("key"), part.get("width"), part.get("arena")) if ok else (None, None, None)
        if not (
            isinstance(key, str)
            and key.strip("/")
            and isinstance(width, int)
            and not isinstance(width, bool)
            and width > 0
            and (arena is None or isinstance(arena, str))
        ):
            raise PosttrainError(
                f"{where}: parts[{i}]: expected {{key: HDF5 dataset under the demo, width: "
                f"positive integer, arena: YAML key (optional)}}, got {part!r}"
            )
        out.append(ColumnPart(key.strip("/"), width, arena))
    return ExtraColumn(name, spec["dtype"], tuple(out))


def _check_column_groups(
    section: str, entries: dict, columns: tuple[ExtraColumn, ...], modality_path: Path, description: str
) -> dict:
    """The joint groups of a modality.json section; the groups of extra columns must fit their column."""
    widths = {column.name: column.width for column in columns}
    joints = {}
    for group, entry in entries.items():
        column = entry.get("original_key", SECTION_COLUMNS[section]) if isinstance(entry, dict) else None
        if column in (None, SECTION_COLUMNS[section]):
            joints[group] = entry
            continue
        if column not in widths:
            raise PosttrainError(
                f"{modality_path}: {section}.{group}: original_key {column!r} is neither "
                f"{SECTION_COLUMNS[section]!r} nor a column declared in {description}"
            )
        start, end = entry.get("start"), entry.get("end")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= widths[column]):
            raise PosttrainError(
                f"{modality_path}: {section}.{group}: slice [{start}, {end}) outside {column} "
                f"of width {widths[column]} ({description})"
            )
    return joints


def _ordered_groups(
    policy: dict[str, list[str]],
    modality: dict,
    policy_path: Path,
    modality_path: Path,
    columns: tuple[ExtraColumn, ...] = (),
    description: str = DESCRIPTION_YAML,
) -> dict[str, list[str]]:
    """Policy groups in modality.json key order, after checking both sections slice them exactly."""
    order = None
    for section in ("state", "action"):
        entries = modality.get(section)
        if not isinstance(entries, dict) or not entries:
            raise PosttrainError(f"{modality_path}: missing or empty `{section}` section")
        entries = _check_column_groups(section, entries, columns, modality_path, description)
        if set(entries) != set(policy):
            raise PosttrainError(
                f"{modality_path}: {section} groups {list(entries)} differ from the groups "
                f"of {policy_path.name} {list(policy)}"
            )
        if order is None:
            order = list(entries)
        elif list(entries) != order:
            raise PosttrainError(f"{modality_path}: action groups {list(entries)} are not in the state order {order}")
        position = 0
        for group, entry in entries.items():
            start, end = (entry.get("start"), entry.get("end")) if isinstance(entry, dict) else (None, None)
            if start != position or end != position + len(policy[group]):
                raise PosttrainError(
                    f"{modality_path}: {section}.{group}: slice [{start}, {end}) expected [{position}, "
                    f"{position + len(policy[group])}) ({len(policy[group])} joints in {policy_path.name}, "
                    f"groups contiguous in key order)"
                )
            position = end
    return {group: policy[group] for group in order}


def _indices(names: list[str], sim_map: dict[str, int], path: Path, what: str) -> np.ndarray:
    missing = [n for n in names if n not in sim_map]
    if missing:
        raise PosttrainError(
            f"{path}: policy joint {missing[0]} not in the sim {what} map"
            + (f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else "")
        )
    return np.array([sim_map[n] for n in names], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Embodiment:
    """Name-based map between sim joint arrays (state 54, action 36 for GR1) and the policy vector (26),
    and the extra columns the embodiment declares (none for GR1; eef poses and teleop commands for G1)."""

    name: str
    groups: dict[str, list[str]]  # policy groups, modality.json key order
    state_joints: dict[str, int]  # sim state joint name -> column
    action_joints: dict[str, int]  # sim action joint name -> column
    sim_state_dims: int
    sim_action_dims: int
    modality: dict
    directory: Path | None = None  # where the files came from (None for from_files)
    files: dict[str, Path] = field(default_factory=dict)
    columns: tuple[ExtraColumn, ...] = ()  # extra parquet columns (embodiment.yaml), in parquet order
    robot_type: str | None = None  # info.json robot_type (None: the name)
    cameras: dict[str, str] | None = None  # default camera_obs name -> video key (None: the converter's)
    joint_names: list[str] = field(init=False)
    state_indices: np.ndarray = field(init=False)  # sim state column of each policy joint
    action_indices: np.ndarray = field(init=False)  # sim action column of each policy joint

    def __post_init__(self):
        names = [n for group in self.groups.values() for n in group]
        object.__setattr__(self, "joint_names", names)
        object.__setattr__(
            self,
            "state_indices",
            _indices(names, self.state_joints, self.files.get("state", Path(STATE_YAML)), "state"),
        )
        object.__setattr__(
            self,
            "action_indices",
            _indices(names, self.action_joints, self.files.get("action", Path(ACTION_YAML)), "action"),
        )

    @classmethod
    def from_files(
        cls,
        state_yaml,
        action_yaml,
        policy_yaml,
        modality_json,
        name: str | None = None,
        directory: Path | None = None,
        description_yaml=None,
    ) -> Embodiment:
        """Build from explicit files (the Arena converter YAML's `*_joints_config_path` keys), plus
        our embodiment.yaml when there is one (its columns, robot_type and cameras; not its joint_maps)."""
        state_yaml, action_yaml, policy_yaml, modality_json = map(
            Path, (state_yaml, action_yaml, policy_yaml, modality_json)
        )
        state_joints, state_dims = _read_sim_map(state_yaml)
        action_joints, action_dims = _read_sim_map(action_yaml)
        modality = _read_modality(modality_json)
        files = {"state": state_yaml, "action": action_yaml, "policy": policy_yaml, "modality": modality_json}
        description = {"columns": (), "robot_type": None, "cameras": None}
        if description_yaml is not None:
            files["description"] = Path(description_yaml)
            description = _read_description(files["description"])
        declared_in = str(files.get("description", f"an {DESCRIPTION_YAML} (none found)"))
        groups = _ordered_groups(
            _read_policy_groups(policy_yaml), modality, policy_yaml, modality_json, description["columns"], declared_in
        )
        return cls(
            name=name or policy_yaml.parent.name,
            groups=groups,
            state_joints=state_joints,
            action_joints=action_joints,
            sim_state_dims=state_dims,
            sim_action_dims=action_dims,
            modality=modality,
            directory=directory,
            files=files,
            columns=description["columns"],
            robot_type=description["robot_type"],
            cameras=description["cameras"],
        )

    @property
    def annotation_key(self) -> str | None:
        """The task-description column modality.json names (`annotation.<its first annotation key>`)."""
        annotation = self.modality.get("annotation")
        return f"annotation.{next(iter(annotation))}" if isinstance(annotation, dict) and annotation else None

    def with_arena_names(self, names: dict[str, str], where: str) -> Embodiment:
        """The same embodiment with its column datasets renamed by an Arena converter YAML
        ({YAML key: dataset name}, e.g. left_eef_pos_name_sim: left_eef_pos). A key that no column
        reads is an error: nothing in the YAML is ignored silently."""
        used = {part.arena for column in self.columns for part in column.parts}
        unknown = [key for key in names if key not in used]
        if unknown:
            raise PosttrainError(
                f"{where}: {unknown[0]}: embodiment {self.name} declares no column read from it "
                f"(`columns:` of its {DESCRIPTION_YAML})"
            )

        def renamed(part: ColumnPart) -> ColumnPart:
            if part.arena not in names:
                return part
            return replace(part, key="/".join([*part.key.split("/")[:-1], names[part.arena]]))

        return replace(self, columns=tuple(replace(c, parts=tuple(map(renamed, c.parts))) for c in self.columns))

    @property
    def dims(self) -> int:
        return len(self.joint_names)

    def group_slices(self) -> dict[str, slice]:
        """Group name -> slice of the policy vector."""
        out, start = {}, 0
        for group, names in self.groups.items():
            out[group] = slice(start, start + len(names))
            start += len(names)
        return out

    @property
    def info_template(self) -> dict | None:
        """info.json of the embodiment directory (None when built from files without one)."""
        path = self.directory / INFO_JSON if self.directory else None
        if path is None or not path.is_file():
            return None
        with open(path) as f:
            return json.load(f)

    def _check(self, values: np.ndarray, dims: int, what: str) -> np.ndarray:
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != dims:
            raise PosttrainError(f"{self.name}: {what} has shape {values.shape}, expected (T, {dims})")
        return values

    def remap_state(self, sim_state: np.ndarray) -> np.ndarray:
        """(T, sim_state_dims) -> (T, 26) float32, policy order."""
        sim_state = self._check(sim_state, self.sim_state_dims, "sim state")
        return np.ascontiguousarray(sim_state[:, self.state_indices], dtype=np.float32)

    def remap_action(self, sim_action: np.ndarray) -> np.ndarray:
        """(T, sim_action_dims) -> (T, 26) float32, policy order."""
        sim_action = self._check(sim_action, self.sim_action_dims, "sim action")
        return np.ascontiguousarray(sim_action[:, self.action_indices], dtype=np.float32)

    def policy_action_to_sim(self, policy_action: np.ndarray) -> np.ndarray:
        """(T, 26) -> (T, sim_action_dims) float32; sim joints the policy does not produce are 0."""
        policy_action = self._check(policy_action, self.dims, "policy action")
        out = np.zeros((len(policy_action), self.sim_action_dims), dtype=np.float32)
        out[:, self.action_indices] = policy_action
        return out


def load_embodiment(name_or_dir: str | os.PathLike) -> Embodiment:
    """`gr1` -> `<repo>/config/embodiments/gr1/`; a path to a directory is used as it is.

    A bare name is looked up among the bundled embodiments first, so a stray `gr1/` folder in the
    current directory cannot shadow `config/embodiments/gr1/`.
    """
    text = str(name_or_dir)
    bundled = EMBODIMENTS_DIR / text
    if "/" not in text and os.sep not in text and bundled.is_dir():
        directory = bundled
    elif Path(text).is_dir():
        directory = Path(text)
    else:
        known = sorted(p.name for p in EMBODIMENTS_DIR.iterdir() if p.is_dir()) if EMBODIMENTS_DIR.is_dir() else []
        raise PosttrainError(
            f"{text}: unknown embodiment (not a directory; known names: "
            f"{', '.join(known) or 'none'} in {EMBODIMENTS_DIR})"
        )
    directory = directory.resolve()
    description = directory / DESCRIPTION_YAML if (directory / DESCRIPTION_YAML).is_file() else None
    maps = _read_description(description)["joint_maps"] if description else DEFAULT_JOINT_MAPS
    for fname in (maps["state"], maps["action"], maps["policy"], MODALITY_JSON):
        if not (directory / fname).is_file():
            raise PosttrainError(f"{directory / fname}: embodiment file missing")
    return Embodiment.from_files(
        directory / maps["state"],
        directory / maps["action"],
        directory / maps["policy"],
        directory / MODALITY_JSON,
        name=directory.name,
        directory=directory,
        description_yaml=description,
    )
