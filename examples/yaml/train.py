"""Trains a perceptron from a random start: each run differs, as real training does."""
import os
import random

from common import load_params, read_rows, write_json

p = load_params()["train"]
rows = read_rows("data/train.csv")
rnd = random.Random(os.urandom(16))
w = [rnd.uniform(-1, 1) for _ in range(3)]


def predict(x1, x2):
    return 1 if w[0] + w[1] * x1 + w[2] * x2 > 0 else 0


for _ in range(p["epochs"]):
    rnd.shuffle(rows)
    for x1, x2, y in rows:
        err = y - predict(x1, x2)
        w = [w[0] + p["lr"] * err, w[1] + p["lr"] * err * x1, w[2] + p["lr"] * err * x2]

acc = sum(predict(x1, x2) == y for x1, x2, y in rows) / len(rows)
run = os.urandom(6).hex()
os.makedirs("models", exist_ok=True)
write_json("models/model.json", {"run": run, "weights": w})
write_json("train_metrics.json", {"acc": acc, "run": run})
print(f"run {run} (#{os.environ.get('CAIRN_INDEX', '0')}): training accuracy {acc:.3f}")
