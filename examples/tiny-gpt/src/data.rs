//! Packing documents into training sequences, and the batch type the model and hook share.
//!
//! A document with tokens `x_0 … x_n` becomes the positions `x_0 … x_n` with targets
//! `x_1 … x_n, EOS`: every position carries a loss and belongs to exactly one document. Documents
//! are packed whole into sequences of `seq_len` positions (the tail is padding); positions restart
//! at 0 for each document and attention is causal *within* a document, so a document's
//! computation is the same whether it is packed with others or alone, and its per-document
//! gradient sketch is exact.

use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::tensor::{Device, Int, Tensor, TensorData};
use influence_hook::{DocRef, StepBatch};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

/// A tokenized document.
#[derive(Clone, Debug)]
pub struct TokenDoc {
    /// Document id.
    pub id: u64,
    /// Source label.
    pub source: String,
    /// Token ids followed by EOS (at least 2 tokens).
    pub tokens: Vec<u32>,
}

/// One packed sequence (host side).
#[derive(Clone, Debug, Default)]
pub struct PackedSeq {
    /// `(document index into the doc list, start position, length)` of each packed document.
    pub spans: Vec<(usize, usize, usize)>,
    /// Input ids (`seq_len`, padding 0).
    pub inputs: Vec<i64>,
    /// Target ids.
    pub targets: Vec<i64>,
    /// Position within the document.
    pub positions: Vec<i64>,
    /// Which packed document each position belongs to (-1: padding).
    pub slot: Vec<i32>,
    /// `(id, source)` of each packed document.
    pub docs: Vec<DocRef>,
}

/// Packs documents (in the given order) into sequences of `seq_len`; documents longer than
/// `seq_len` are truncated to it.
pub fn pack(docs: &[TokenDoc], seq_len: usize) -> Vec<PackedSeq> {
    let mut out = Vec::new();
    let mut cur = PackedSeq::default();
    for doc in docs {
        let len = (doc.tokens.len() - 1).min(seq_len);
        if cur.inputs.len() + len > seq_len {
            out.push(finish(std::mem::take(&mut cur), seq_len));
        }
        let slot = cur.docs.len() as i32;
        cur.spans.push((cur.docs.len(), cur.inputs.len(), len));
        for p in 0..len {
            cur.inputs.push(i64::from(doc.tokens[p]));
            cur.targets.push(i64::from(doc.tokens[p + 1]));
            cur.positions.push(p as i64);
            cur.slot.push(slot);
        }
        cur.docs.push(DocRef {
            id: doc.id,
            source: doc.source.clone(),
        });
    }
    if !cur.inputs.is_empty() {
        out.push(finish(cur, seq_len));
    }
    out
}

fn finish(mut s: PackedSeq, seq_len: usize) -> PackedSeq {
    while s.inputs.len() < seq_len {
        s.inputs.push(0);
        s.targets.push(0);
        s.positions.push(0);
        s.slot.push(-1);
    }
    s
}

/// Shuffles (seeded) and packs: one epoch's sequences.
pub fn epoch(docs: &[TokenDoc], seq_len: usize, seed: u64) -> Vec<PackedSeq> {
    let mut order: Vec<TokenDoc> = docs.to_vec();
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    pack(&order, seq_len)
}

/// A training batch on the device, with its host-side description for the hook.
#[derive(Clone, Debug)]
pub struct LmBatch {
    /// `[b, s]` input ids.
    pub inputs: Tensor<2, Int>,
    /// `[b, s]` target ids.
    pub targets: Tensor<2, Int>,
    /// `[b, s]` positions within documents.
    pub positions: Tensor<2, Int>,
    /// `[b, 1, s, s]`: 0 where a query may attend a key (same document, not later), −1e9 elsewhere.
    pub attn_bias: Tensor<4>,
    /// `[b, s]`: 1 on loss-bearing positions, 0 on padding.
    pub weights: Tensor<2>,
    /// The host description.
    pub host: Arc<HostBatch>,
}

/// Host-side description of a batch.
#[derive(Debug)]
pub struct HostBatch {
    /// Sequences.
    pub batch_size: usize,
    /// Positions per sequence.
    pub seq_len: usize,
    /// Per position: index into `docs` (-1 padding).
    pub doc_index: Vec<i32>,
    /// Documents of the batch.
    pub docs: Vec<DocRef>,
    /// Per position: input id.
    pub inputs: Vec<i64>,
}

impl LmBatch {
    /// Collates packed sequences onto `device`.
    pub fn new(seqs: &[PackedSeq], device: &Device) -> Self {
        let b = seqs.len();
        let s = seqs.first().map_or(0, |q| q.inputs.len());
        let mut docs = Vec::new();
        let mut doc_index = Vec::with_capacity(b * s);
        let mut bias = vec![0.0f32; b * s * s];
        let (mut inputs, mut targets, mut positions, mut weights) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (bi, q) in seqs.iter().enumerate() {
            let base = docs.len() as i32;
            docs.extend(q.docs.iter().cloned());
            for t in 0..s {
                let slot = q.slot[t];
                doc_index.push(if slot < 0 { -1 } else { base + slot });
                weights.push(if slot < 0 { 0.0f32 } else { 1.0 });
                for k in 0..s {
                    let allowed = k <= t && q.slot[k] == slot;
                    // Padding attends to itself only, so no row is fully masked.
                    let allowed = allowed || (slot < 0 && k == t);
                    if !allowed {
                        bias[(bi * s + t) * s + k] = -1e9;
                    }
                }
            }
            inputs.extend_from_slice(&q.inputs);
            targets.extend_from_slice(&q.targets);
            positions.extend_from_slice(&q.positions);
        }
        let int = |v: Vec<i64>| Tensor::<2, Int>::from_data(TensorData::new(v, [b, s]), device);
        Self {
            inputs: int(inputs.clone()),
            targets: int(targets),
            positions: int(positions),
            attn_bias: Tensor::from_data(TensorData::new(bias, [b, 1, s, s]), device),
            weights: Tensor::from_data(TensorData::new(weights, [b, s]), device),
            host: Arc::new(HostBatch {
                batch_size: b,
                seq_len: s,
                doc_index,
                docs,
                inputs,
            }),
        }
    }

    /// Loss-bearing positions.
    pub fn loss_tokens(&self) -> usize {
        self.host.doc_index.iter().filter(|&&d| d >= 0).count()
    }

    /// The hook's description of this batch, with the per-token losses if given.
    pub fn step_batch(&self, token_loss: Option<Tensor<2>>) -> StepBatch {
        StepBatch {
            batch_size: self.host.batch_size,
            seq_len: self.host.seq_len,
            doc_index: self.host.doc_index.clone(),
            docs: self.host.docs.clone(),
            loss_tokens: None,
            token_loss,
            loss_multiplier: None,
        }
    }
}

/// burn-train batcher: packed sequences → [`LmBatch`].
#[derive(Clone, Debug, Default)]
pub struct LmBatcher;

impl Batcher<PackedSeq, LmBatch> for LmBatcher {
    fn batch(&self, items: Vec<PackedSeq>, device: &Device) -> LmBatch {
        LmBatch::new(&items, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_documents_whole_and_masks_padding() {
        let docs: Vec<TokenDoc> = (0..5)
            .map(|i| TokenDoc {
                id: i,
                source: "s".into(),
                tokens: (0..(3 + i as u32)).collect(),
            })
            .collect();
        let seqs = pack(&docs, 8);
        // lengths (positions) 2,3,4,5,6 → [2,3] [4] [5] [6] with seq_len 8
        assert_eq!(seqs.len(), 4);
        assert_eq!(seqs[0].slot, vec![0, 0, 1, 1, 1, -1, -1, -1]);
        assert_eq!(seqs[0].positions[..5], [0, 1, 0, 1, 2]);
        assert_eq!(seqs[0].targets[..2], [1, 2]);
        let total: usize = seqs
            .iter()
            .map(|s| s.slot.iter().filter(|&&x| x >= 0).count())
            .sum();
        assert_eq!(total, 2 + 3 + 4 + 5 + 6);
    }
}
