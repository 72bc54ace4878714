"""Unsupervised visual anomaly detection for industrial quality control.

Train on images of good parts only; score and localise defects at test time.
Importing the package has no side effects.
"""

__version__ = "0.1.0"
