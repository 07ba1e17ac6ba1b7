"""Writes a short Markdown report from the metrics of the chosen model."""
import json

with open("train_metrics.json") as f:
    train = json.load(f)
with open("eval.json") as f:
    ev = json.load(f)
with open("report.md", "w") as f:
    f.write("# Report\n\n")
    f.write(f"- model run: {ev['run']}\n")
    f.write(f"- training accuracy: {train['acc']:.3f}\n")
    f.write(f"- test accuracy: {ev['test_acc']:.3f}\n")
