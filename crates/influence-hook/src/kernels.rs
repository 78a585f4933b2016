//! Device-side kernels: projections and per-document outer products, as batched matmuls.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::{HookError, StepBatch};

/// `x · P` on the last axis: `[b, s, d] · [d(+1), k] → [b, s, k]`; with `bias`, `P`'s last row is
/// the weight of the appended constant 1, added without materialising `[x, 1]`.
pub(crate) fn project(x: Tensor<3>, p: &Tensor<2>, bias: bool) -> Tensor<3> {
    let [b, s, d] = x.dims();
    let k = p.dims()[1];
    let y = x.reshape([b * s, d]).matmul(p.clone().narrow(0, 0, d));
    let y = if bias {
        y + p.clone().narrow(0, d, 1)
    } else {
        y
    };
    y.reshape([b, s, k])
}

/// How the tokens of a batch map to documents, on the device.
pub(crate) struct Segments {
    pub batch: usize,
    pub seq_len: usize,
    /// Documents per sequence (max over sequences).
    pub per_seq: usize,
    /// `[b, J, s]`: 1 where token t of sequence b belongs to its j-th document.
    pub mask: Tensor<3>,
    /// `[D, b·J]`: 1 where (sequence, local document) is batch document d.
    pub combine: Tensor<2>,
    /// For each of the D rows: index into `StepBatch::docs`.
    pub docs: Vec<usize>,
    /// Loss-bearing tokens of each row.
    pub tokens: Vec<u32>,
    /// Flat indices of all document (non-padding) tokens.
    pub valid: Vec<usize>,
}

impl Segments {
    pub(crate) fn new(batch: &StepBatch, device: &Device) -> Result<Self, HookError> {
        let (b, s) = (batch.batch_size, batch.seq_len);
        if batch.doc_index.len() != b * s {
            return Err(HookError::Batch(format!(
                "doc_index has {} entries, batch_size × seq_len is {}",
                batch.doc_index.len(),
                b * s
            )));
        }
        let mut row_of_doc = vec![usize::MAX; batch.docs.len()];
        let mut docs = Vec::new();
        let mut tokens = Vec::new();
        let mut local: Vec<Vec<usize>> = vec![Vec::new(); b];
        let mut valid = Vec::new();
        for (flat, &di) in batch.doc_index.iter().enumerate() {
            if di < 0 {
                continue;
            }
            let di = di as usize;
            if di >= batch.docs.len() {
                return Err(HookError::Batch(format!(
                    "doc_index[{flat}] = {di} but the batch lists {} documents",
                    batch.docs.len()
                )));
            }
            if row_of_doc[di] == usize::MAX {
                row_of_doc[di] = docs.len();
                docs.push(di);
                tokens.push(0);
            }
            tokens[row_of_doc[di]] += 1;
            let seq = flat / s;
            if !local[seq].contains(&di) {
                local[seq].push(di);
            }
            valid.push(flat);
        }
        let per_seq = local.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut mask = vec![0.0f32; b * per_seq * s];
        let mut combine = vec![0.0f32; docs.len() * b * per_seq];
        for (seq, locals) in local.iter().enumerate() {
            for (j, &di) in locals.iter().enumerate() {
                combine[row_of_doc[di] * b * per_seq + seq * per_seq + j] = 1.0;
                for t in 0..s {
                    if batch.doc_index[seq * s + t] == di as i32 {
                        mask[(seq * per_seq + j) * s + t] = 1.0;
                    }
                }
            }
        }
        let d = docs.len();
        Ok(Self {
            batch: b,
            seq_len: s,
            per_seq,
            mask: Tensor::from_data(TensorData::new(mask, [b, per_seq, s]), device),
            combine: Tensor::from_data(TensorData::new(combine, [d, b * per_seq]), device),
            docs,
            tokens,
            valid,
        })
    }

    /// `[D, k_g·k_a]`: for each document, `Σ_{t∈doc} gp_tᵀ ap_t` (row-major `k_g × k_a`).
    pub(crate) fn outer(&self, gp: Tensor<3>, ap: Tensor<3>) -> Tensor<2> {
        let (b, j, s) = (self.batch, self.per_seq, self.seq_len);
        let kg = gp.dims()[2];
        let ka = ap.dims()[2];
        let per_local = if j == 1 {
            // One document per sequence (the common case): no expansion needed.
            let gm = gp * self.mask.clone().reshape([b, s, 1]);
            gm.swap_dims(1, 2).matmul(ap).reshape([b, kg * ka])
        } else {
            let gm = gp.unsqueeze_dim::<4>(1) * self.mask.clone().unsqueeze_dim::<4>(3);
            let ap = ap.unsqueeze_dim::<4>(1).expand([b, j, s, ka]);
            gm.swap_dims(2, 3).matmul(ap).reshape([b * j, kg * ka])
        };
        self.combine.clone().matmul(per_local)
    }

    /// Flat token indices to use for the factors: all document tokens, or a uniform sample.
    pub(crate) fn factor_tokens(
        &self,
        fraction: f64,
        rng: &mut impl rand::Rng,
        device: &Device,
    ) -> Option<(Tensor<1, Int>, usize)> {
        let n = self.valid.len();
        if n == 0 {
            return None;
        }
        if fraction >= 1.0 && n == self.batch * self.seq_len {
            return None; // every token, no gather needed
        }
        let m = ((n as f64 * fraction).ceil() as usize).clamp(1, n);
        let mut picked: Vec<i64> = if m == n {
            self.valid.iter().map(|&i| i as i64).collect()
        } else {
            rand::seq::index::sample(rng, n, m)
                .into_iter()
                .map(|i| self.valid[i] as i64)
                .collect()
        };
        picked.sort_unstable();
        Some((Tensor::from_data(TensorData::new(picked, [m]), device), m))
    }
}
