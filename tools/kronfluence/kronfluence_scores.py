"""kronfluence's EK-FAC scores for the bundle `kronfluence-export` writes, compared with ours.

    cargo run --release -p tiny-gpt --bin kronfluence-export   # the bundle
    tools/kronfluence/run.sh                                    # this script in its pinned venv

1. Loads the bundle's weights into the PyTorch replica (replica.py) and checks its logits against
   burn's on the same tokens (reference_logits.safetensors): the largest absolute difference must
   be below 1e-4, or the script stops.
2. Fits EK-FAC with kronfluence on the bundle's documents with the settings that match ours
   (docs/accuracy.md (vii)): empirical Fisher, the blocks' 8 Linear layers, every non-padding
   token in A and S, Λ from every document, damping 0.1 × mean Λ per layer (`damping_factor=None`),
   float64 throughout.
3. Computes the pairwise scores of the queries (measurement: the summed loss of the completion
   tokens; prompt tokens masked) against every document (training loss: the document's summed
   token loss) and writes them to kronfluence.arrow, in the format `influence query --out
   FILE.arrow` writes and `influence report --scores` reads: one row per document (doc_id,
   source, text) and a float64 `score:<query id>` column per query.
4. If ours.arrow is in the bundle, prints Pearson and Spearman per query between the two.
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from kronfluence.utils.dataset import DataLoaderKwargs

from replica import Gpt

IGNORE = -100
LOGIT_TOLERANCE = 1e-4


def read_jsonl(path: pathlib.Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def document_example(tokens: list) -> dict:
    n = len(tokens) - 1
    return {
        "inputs": torch.tensor(tokens[:-1]),
        "targets": torch.tensor(tokens[1:]),
        "positions": torch.arange(n),
    }


def query_example(q: dict) -> dict:
    prompt, completion = q["prompt_tokens"], q["completion_tokens"]
    ex = document_example(prompt + completion)
    # Position p predicts token p + 1: the completion is predicted from len(prompt) - 1 on.
    ex["targets"][: len(prompt) - 1] = IGNORE
    return ex


def collate(examples: list) -> dict:
    s = max(len(e["inputs"]) for e in examples)

    def pad(key, value):
        return torch.stack(
            [F.pad(e[key], (0, s - len(e[key])), value=value) for e in examples]
        )

    return {
        "inputs": pad("inputs", 0),
        "targets": pad("targets", IGNORE),
        "positions": pad("positions", 0),
        "mask": torch.stack(
            [F.pad(torch.ones(len(e["inputs"]), dtype=torch.long), (0, s - len(e["inputs"]))) for e in examples]
        ),
    }


class LmTask(Task):
    """Summed token losses; the measurement is the (completion-masked) summed loss too, so that
    a positive score means the document lowers the completion's loss, as ours."""

    def __init__(self, tracked: list):
        super().__init__()
        self.tracked = tracked

    @staticmethod
    def _summed(logits, targets):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )

    def compute_train_loss(self, batch, model, sample=False):
        logits = model(batch["inputs"], batch["positions"])
        targets = batch["targets"]
        if sample:
            # The true Fisher: labels drawn from the model's own softmax (one forward pass, so
            # that kronfluence's hooks see it).
            with torch.no_grad():
                drawn = torch.distributions.Categorical(logits=logits.detach()).sample()
            targets = torch.where(targets == IGNORE, targets, drawn)
        return self._summed(logits, targets)

    def compute_measurement(self, batch, model):
        return self._summed(model(batch["inputs"], batch["positions"]), batch["targets"])

    def get_influence_tracked_modules(self):
        return self.tracked

    def get_attention_mask(self, batch):
        return batch["mask"]


def check_logits(model: Gpt, bundle: pathlib.Path, docs: list, queries: list) -> float:
    reference = load_file(str(bundle / "reference_logits.safetensors"))
    worst = 0.0
    with torch.no_grad():
        for name, want in sorted(reference.items()):
            kind, i = name.split(".")
            tokens = (
                docs[int(i)]["tokens"]
                if kind == "documents"
                else queries[int(i)]["prompt_tokens"] + queries[int(i)]["completion_tokens"]
            )
            ex = collate([document_example(tokens)])
            got = model(ex["inputs"], ex["positions"])[0]
            diff = (got - want).abs().max().item()
            print(f"logits {name}: {tuple(want.shape)}, max |replica − burn| = {diff:.2e}")
            worst = max(worst, diff)
    return worst


def read_scores(path: pathlib.Path) -> tuple:
    table = ipc.open_file(pa.memory_map(str(path))).read_all()
    ids = table.column("doc_id").to_numpy()
    cols = {
        name[len("score:") :]: table.column(name).to_numpy()
        for name in table.column_names
        if name.startswith("score:")
    }
    return ids, cols


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle",
        type=pathlib.Path,
        default=pathlib.Path("examples/tiny-gpt/validate/kronfluence"),
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--fisher",
        choices=["empirical", "sampled"],
        default="empirical",
        help="the Fisher kronfluence fits (ours: empirical); 'sampled' is kronfluence's own default",
    )
    ap.add_argument(
        "--damping",
        type=float,
        default=None,
        help="absolute damping (kronfluence's default is 1e-8); default: 0.1 × mean Λ, as ours",
    )
    ap.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="where to write the scores (default: BUNDLE/kronfluence.arrow)",
    )
    args = ap.parse_args()
    bundle = args.bundle
    torch.manual_seed(0)
    config = json.loads((bundle / "config.json").read_text())
    docs = read_jsonl(bundle / "documents.jsonl")
    queries = read_jsonl(bundle / "queries.jsonl")
    model = Gpt.from_weights(load_file(str(bundle / "weights.safetensors")), config)
    model.eval()

    worst = check_logits(model, bundle, docs, queries)
    if worst > LOGIT_TOLERANCE:
        print(f"replica logits differ from burn's by {worst:.2e} > {LOGIT_TOLERANCE}", file=sys.stderr)
        return 1

    # float64 from here on: kronfluence's reference should not add float32 noise of its own.
    model = model.double()
    task = LmTask(model.tracked_modules())
    model = prepare_model(model, task)
    train = [document_example(d["tokens"]) for d in docs]
    query = [query_example(q) for q in queries]
    f64 = torch.float64
    factor_args = FactorArguments(
        strategy="ekfac",
        use_empirical_fisher=args.fisher == "empirical",
        covariance_max_examples=None,
        lambda_max_examples=None,
        activation_covariance_dtype=f64,
        gradient_covariance_dtype=f64,
        eigendecomposition_dtype=f64,
        per_sample_gradient_dtype=f64,
        lambda_dtype=f64,
    )
    score_args = ScoreArguments(
        damping_factor=args.damping,  # None: kronfluence's heuristic 0.1 × mean(Λ) per module, as ours
        per_sample_gradient_dtype=f64,
        precondition_dtype=f64,
        score_dtype=f64,
    )
    loader = DataLoaderKwargs(collate_fn=collate)
    with tempfile.TemporaryDirectory() as tmp:
        analyzer = Analyzer(
            analysis_name="tiny-gpt",
            model=model,
            task=task,
            cpu=True,
            disable_tqdm=True,
            output_dir=tmp,
        )
        analyzer.fit_all_factors(
            factors_name="ekfac",
            dataset=train,
            per_device_batch_size=args.batch_size,
            dataloader_kwargs=loader,
            factor_args=factor_args,
        )
        analyzer.compute_pairwise_scores(
            scores_name="pairwise",
            factors_name="ekfac",
            query_dataset=query,
            train_dataset=train,
            per_device_query_batch_size=len(query),
            per_device_train_batch_size=args.batch_size,
            dataloader_kwargs=loader,
            score_args=score_args,
        )
        scores = analyzer.load_pairwise_scores("pairwise")["all_modules"].to(f64).numpy()

    if scores.shape != (len(queries), len(docs)):
        print(f"kronfluence returned {scores.shape}, expected {(len(queries), len(docs))}", file=sys.stderr)
        return 1
    fields = [
        pa.field("doc_id", pa.uint64(), nullable=False),
        pa.field("source", pa.utf8(), nullable=False),
        pa.field("text", pa.utf8(), nullable=False),
    ] + [pa.field(f"score:{q['id']}", pa.float64(), nullable=False) for q in queries]
    # −log p(completion | prompt) of each query, from the replica: the report's per-nat figures.
    with torch.no_grad():
        nats = {
            q["id"]: float(task.compute_measurement(collate([ex]), model))
            for q, ex in zip(queries, query)
        }
    meta = {
        "burn_influence.producer": "kronfluence 1.0.1 (tools/kronfluence/kronfluence_scores.py)",
        "burn_influence.nats": json.dumps(nats),
    }
    columns = [
        pa.array([d["id"] for d in docs], pa.uint64()),
        pa.array([d["source"] for d in docs], pa.utf8()),
        pa.array([d["text"] for d in docs], pa.utf8()),
    ] + [pa.array(scores[i], pa.float64()) for i in range(len(queries))]
    table = pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=meta))
    out = args.out or bundle / "kronfluence.arrow"
    with ipc.new_file(str(out), table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table)
    print(f"kronfluence: {len(queries)} queries × {len(docs)} documents → {out}")

    ours_path = bundle / "ours.arrow"
    if ours_path.exists():
        ids, ours = read_scores(ours_path)
        order = {int(i): k for k, i in enumerate(ids)}
        idx = np.array([order[d["id"]] for d in docs])
        pearsons, spearmans, rel = [], [], []
        for i, q in enumerate(queries):
            a, b = scores[i], ours[q["id"]][idx]
            pearsons.append(float(np.corrcoef(a, b)[0, 1]))
            spearmans.append(spearman(a, b))
            rel.append(float(np.abs(a - b).max() / np.abs(a).max()))
            print(
                f"{q['id']:>32}: Pearson {pearsons[-1]:.6f}, Spearman {spearmans[-1]:.6f}, "
                f"max |ours − kronfluence| / max |kronfluence| {rel[-1]:.1e}"
            )
        print(
            f"ours vs kronfluence over {len(queries)} queries: Pearson mean {np.mean(pearsons):.6f}, "
            f"min {np.min(pearsons):.6f}; Spearman mean {np.mean(spearmans):.6f}, min {np.min(spearmans):.6f}; "
            f"largest relative difference {np.max(rel):.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
