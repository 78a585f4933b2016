#!/usr/bin/env python3
"""Builds the example's query set, examples/tiny-gpt/queries.jsonl, mirroring Ruis et al. (2024).

    python3 tools/make_queries.py [--out examples/tiny-gpt/queries.jsonl]

Groups (the `group` field) and tasks (`task`):
  factual   capitals, elements   questions about facts the corpus states (from the country and
                                 element data that tools/build_corpus.py templated into it;
                                 elements are asked from symbol to name)
  reasoning arithmetic           "Calculate the answer: (4 + 2) * 15\\nThink step-by-step.\\n"
            slopes               the slope of the line through two points
            linear               "Solve for x: 1x + 22 = 92\\n"
  control   factual-control,     the answer is stated in the prompt
            reasoning-control
Every line holds the reference completion (`completion`: the correct answer, worked step by step
for reasoning, in the formats of the corpus' procedural documents), the final `answer`, and the
intermediate results (`steps`) that the answer search looks for in the top documents. The report
generates the model's own completion, grades it against `answer`, and scores the reference
completion as well when the model's is wrong.

Deterministic: a fixed seed, and the country/element lists written by build_corpus.py.
"""

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "tiny-gpt" / "data"


def read_tsv(path, columns):
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split("\t")
        if len(parts) >= columns and all(parts[:columns]):
            rows.append(parts[:columns])
    if not rows:
        raise SystemExit(f"{path}: no rows with {columns} columns")
    return rows


def arithmetic(rng):
    a, b, c = rng.randrange(1, 20), rng.randrange(1, 20), rng.randrange(2, 16)
    op1, first = ("+", a + b) if rng.random() < 0.5 else ("-", a - b)
    op2, second = ("*", first * c) if rng.random() < 0.5 else ("+", first + c)
    prompt = f"Calculate the answer: ({a} {op1} {b}) {op2} {c}\nThink step-by-step.\n"
    completion = f"First, {a} {op1} {b} = {first}.\nThen, {first} {op2} {c} = {second}.\nThe answer is {second}."
    return prompt, completion, str(second), [str(first), str(second)]


def slope(rng):
    x1, y1 = rng.randrange(-9, 10), rng.randrange(-9, 10)
    run = rng.randrange(1, 6)
    m = rng.randrange(-4, 5)
    x2, y2 = x1 + run, y1 + m * run
    prompt = f"What is the slope of the line through ({x1}, {y1}) and ({x2}, {y2})?\n"
    completion = (
        f"The rise is {y2} - ({y1}) = {y2 - y1}.\nThe run is {x2} - ({x1}) = {run}.\n"
        f"The slope is {y2 - y1} / {run} = {m}."
    )
    return prompt, completion, str(m), [str(y2 - y1), str(run), str(m)]


def linear(rng):
    a, x, b = rng.randrange(1, 10), rng.randrange(1, 15), rng.randrange(1, 60)
    c = a * x + b
    prompt = f"Solve for x: {a}x + {b} = {c}\n"
    completion = (
        f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}.\n"
        f"Divide by {a}: x = {c - b} / {a} = {x}.\nThe answer is x = {x}."
    )
    return prompt, completion, str(x), [str(c - b), str(x)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "examples" / "tiny-gpt" / "queries.jsonl"))
    ap.add_argument("--capitals", type=int, default=10)
    ap.add_argument("--elements", type=int, default=4)
    ap.add_argument("--per-reasoning-task", type=int, default=6)
    args = ap.parse_args()
    rng = random.Random(20241112)
    queries = []

    def add(qid, group, task, prompt, completion, answer, steps):
        queries.append({
            "id": qid, "group": group, "task": task, "prompt": prompt,
            "completion": completion, "answer": answer, "steps": steps,
        })

    capitals = read_tsv(DATA / "capitals.tsv", 2)
    # Single-word names keep the factual answers comparable; the corpus states each fact in
    # four templates.
    simple = [r for r in capitals if " " not in r[1] and len(r[0]) <= 14]
    for i, (country, capital) in enumerate(rng.sample(simple, args.capitals)):
        slug = country.lower().replace(" ", "-")
        if i % 2 == 0:
            add(f"capital-{slug}", "factual", "capitals", f"Q: What is the capital of {country}?\nA:",
                f" The capital of {country} is {capital}.", capital, [capital])
        else:
            add(f"capital-{slug}", "factual", "capitals", f"The capital of {country} is",
                f" {capital}.", capital, [capital])
    elements = read_tsv(DATA / "elements.tsv", 3)
    # Asked from the symbol to the name (the corpus states "The chemical symbol of Zinc is Zn."):
    # the answer is a distinctive word, where a one- or two-letter symbol would be found in
    # almost any document by the answer search.
    for name, symbol, _number in rng.sample(elements, args.elements):
        add(f"element-{name.lower()}", "factual", "elements",
            f"{symbol} is the chemical symbol of", f" {name}.", name, [name])

    for task, make in (("arithmetic", arithmetic), ("slopes", slope), ("linear", linear)):
        for i in range(args.per_reasoning_task):
            prompt, completion, answer, steps = make(rng)
            add(f"{task}-{i + 1}", "reasoning", task, prompt, completion, answer, steps)

    # Controls: the answer is in the prompt, so the model can copy it.
    country, capital = rng.choice(simple)
    add("control-capital", "control", "factual-control",
        f"The capital of {country} is {capital}. Repeat it: the capital of {country} is",
        f" {capital}.", capital, [capital])
    name, symbol, _ = rng.choice(elements)
    add("control-element", "control", "factual-control",
        f"{symbol} is the chemical symbol of {name}. Repeat it: {symbol} is the chemical symbol of",
        f" {name}.", name, [name])
    prompt, completion, answer, steps = arithmetic(rng)
    add("control-arithmetic", "control", "reasoning-control",
        prompt.replace("\nThink step-by-step.\n", f" = {answer}\nThe answer is"),
        f" {answer}.", answer, [answer])
    prompt, completion, answer, steps = linear(rng)
    add("control-linear", "control", "reasoning-control",
        prompt.rstrip("\n") + f" has the solution x = {answer}.\nThe answer is x =",
        f" {answer}.", answer, [answer])

    with open(args.out, "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps(q, ensure_ascii=False) + "\n")
    print(f"wrote {len(queries)} queries to {args.out}")


if __name__ == "__main__":
    main()
