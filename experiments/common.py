"""What the experiment scripts share: writing a results table."""

import csv


def write_csv(rows, path):
    """Write dict rows as CSV, floats to 4 decimals (the write-ups' tables, experiments/<name>.md, are read from these)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in row.items()})
    print(f"wrote {path}")
