"""``python -m anomaly`` runs the command-line interface."""

from anomaly.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
