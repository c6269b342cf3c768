"""The experiment's design: the three variants and the paired comparisons between them.

Its own module so the behaviour stage and the analysis both read it at import time."""

ROLES = ("base", "misaligned", "control")
COMPARISONS = {  # name -> (a, b): a paired comparison of a minus b
    "misaligned_vs_base": ("misaligned", "base"),
    "control_vs_base": ("control", "base"),
    "misaligned_vs_control": ("misaligned", "control"),
}
