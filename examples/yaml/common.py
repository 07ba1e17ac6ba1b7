"""Helpers shared by the scripts: a declared dep of each stage that imports it."""
import csv
import json

try:
    import yaml

    def load_params(path="params.yaml"):
        with open(path) as f:
            return yaml.safe_load(f)
except ImportError:  # Cairn writes the picked params as JSON, which is YAML too
    def load_params(path="params.yaml"):
        with open(path) as f:
            return json.load(f)


def read_rows(path):
    with open(path) as f:
        return [(float(r["x1"]), float(r["x2"]), int(r["label"])) for r in csv.DictReader(f)]


def write_rows(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x1", "x2", "label"])
        w.writerows(rows)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
