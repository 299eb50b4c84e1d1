"""The one exception type a stage raises for bad input.

The CLI turns it into a single `error: ...` line and exit code 2, so every message must name
the file, and where it applies the demo/episode and key, e.g.
`raw.hdf5: data/demo_3/obs/robot_joint_pos: shape (10, 53), expected (T, 54)`.
"""


class PosttrainError(Exception):
    """Bad input or a failed check, reported to the user as one line."""
