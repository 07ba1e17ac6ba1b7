"""Scores the chosen model on the held-out test set."""
import json

from common import read_rows, write_json

with open("models/model.json") as f:
    model = json.load(f)
w = model["weights"]
rows = read_rows("data/test.csv")
acc = sum((1 if w[0] + w[1] * x1 + w[2] * x2 > 0 else 0) == y for x1, x2, y in rows) / len(rows)
write_json("eval.json", {"test_acc": acc, "run": model["run"]})
print(f"model {model['run']}: test accuracy {acc:.3f}")
