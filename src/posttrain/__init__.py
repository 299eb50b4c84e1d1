"""posttrain: Isaac Lab Mimic demonstrations -> LeRobot v2.1 -> GR00T-style post-training."""

__version__ = "0.1.0"
