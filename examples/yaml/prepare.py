"""Shuffles data/raw.csv with a fixed seed and splits it into train and test sets."""
import random

from common import load_params, read_rows, write_rows

p = load_params()["prepare"]
rows = read_rows("data/raw.csv")
random.Random(p["seed"]).shuffle(rows)
cut = int(len(rows) * (1 - p["test_fraction"]))
write_rows("data/train.csv", rows[:cut])
write_rows("data/test.csv", rows[cut:])
print(f"prepared {cut} training and {len(rows) - cut} test rows")
