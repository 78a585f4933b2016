//! A decoder-only transformer: token + position embeddings, pre-LN blocks with causal,
//! document-masked self-attention and a GELU MLP. Every Linear is a [`TrackedLinear`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, LinearConfig};
use burn::tensor::activation::{gelu, log_softmax, softmax};
use burn::tensor::{Device, Int, Tensor, TensorData};
use influence_hook::{FitLabels, FitLoss, Tap, TrackedLinear};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::data::LmBatch;

/// Model shape.
#[derive(Config, Debug)]
pub struct GptConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Width.
    #[config(default = 128)]
    pub d_model: usize,
    /// Blocks.
    #[config(default = 4)]
    pub n_layers: usize,
    /// Attention heads.
    #[config(default = 4)]
    pub n_heads: usize,
    /// MLP hidden width.
    #[config(default = 512)]
    pub d_ff: usize,
    /// Maximum position (per document).
    #[config(default = 128)]
    pub max_pos: usize,
    /// Track the output head too (vocab-wide; off by default).
    #[config(default = false)]
    pub track_head: bool,
}

/// Multi-head causal self-attention restricted to the query's own document.
#[derive(Module, Debug)]
pub struct Attention {
    /// Fused query/key/value projection.
    pub qkv: TrackedLinear,
    /// Output projection.
    pub out: TrackedLinear,
    #[module(skip)]
    n_heads: usize,
}

/// The MLP of a block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Up projection.
    pub fc1: TrackedLinear,
    /// Down projection.
    pub fc2: TrackedLinear,
}

/// A pre-LN transformer block.
#[derive(Module, Debug)]
pub struct Block {
    ln1: LayerNorm,
    /// Attention.
    pub attn: Attention,
    ln2: LayerNorm,
    /// MLP.
    pub mlp: Mlp,
}

/// The model.
#[derive(Module, Debug)]
pub struct Gpt {
    tok: Embedding,
    pos: Embedding,
    /// Blocks.
    pub blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// Output head.
    pub head: TrackedLinear,
}

impl GptConfig {
    /// Initialises the model, registering its Linear layers with `tap` under paths like
    /// `blocks.0.attn.qkv`, `blocks.0.mlp.fc1` and `head`.
    pub fn init(&self, device: &Device, tap: &Tap) -> Gpt {
        let d = self.d_model;
        let linear =
            |i, o, name: &str| TrackedLinear::new(LinearConfig::new(i, o).init(device), name, tap);
        let blocks = (0..self.n_layers)
            .map(|i| Block {
                ln1: LayerNormConfig::new(d).init(device),
                attn: Attention {
                    qkv: linear(d, 3 * d, &format!("blocks.{i}.attn.qkv")),
                    out: linear(d, d, &format!("blocks.{i}.attn.out")),
                    n_heads: self.n_heads,
                },
                ln2: LayerNormConfig::new(d).init(device),
                mlp: Mlp {
                    fc1: linear(d, self.d_ff, &format!("blocks.{i}.mlp.fc1")),
                    fc2: linear(self.d_ff, d, &format!("blocks.{i}.mlp.fc2")),
                },
            })
            .collect();
        let head_tap = if self.track_head {
            tap.clone()
        } else {
            Tap::detached()
        };
        Gpt {
            tok: EmbeddingConfig::new(self.vocab_size, d).init(device),
            pos: EmbeddingConfig::new(self.max_pos, d).init(device),
            blocks,
            ln_f: LayerNormConfig::new(d).init(device),
            head: TrackedLinear::new(
                LinearConfig::new(d, self.vocab_size).init(device),
                "head",
                &head_tap,
            ),
        }
    }
}

impl Attention {
    fn forward(&self, x: Tensor<3>, bias: Tensor<4>) -> Tensor<3> {
        let [b, s, d] = x.dims();
        let h = self.n_heads;
        let dh = d / h;
        let qkv = self.qkv.forward(x).reshape([b, s, 3, h, dh]);
        let part = |i: usize| {
            qkv.clone()
                .narrow(2, i, 1)
                .reshape([b, s, h, dh])
                .swap_dims(1, 2)
        };
        let (q, k, v) = (part(0), part(1), part(2));
        let scores = q.matmul(k.swap_dims(2, 3)) / (dh as f64).sqrt();
        let att = softmax(scores + bias.expand([b, h, s, s]), 3);
        let y = att.matmul(v).swap_dims(1, 2).reshape([b, s, d]);
        self.out.forward(y)
    }
}

impl Gpt {
    /// Logits `[b, s, vocab]`.
    pub fn forward(&self, batch: &LmBatch) -> Tensor<3> {
        let mut x =
            self.tok.forward(batch.inputs.clone()) + self.pos.forward(batch.positions.clone());
        for blk in &self.blocks {
            x = x.clone()
                + blk
                    .attn
                    .forward(blk.ln1.forward(x), batch.attn_bias.clone());
            let hdn = blk.ln2.forward(x.clone());
            x = x + blk.mlp.fc2.forward(gelu(blk.mlp.fc1.forward(hdn)));
        }
        self.head.forward(self.ln_f.forward(x))
    }

    /// Mean cross-entropy over loss-bearing tokens, and the detached per-token losses `[b, s]`.
    pub fn loss(&self, batch: &LmBatch, labels: FitLabels) -> (Tensor<1>, Tensor<2>) {
        loss_from_logits(self.forward(batch), batch, labels)
    }
}

/// Mean cross-entropy of `logits` over the batch's loss-bearing tokens, and the detached
/// per-token losses `[b, s]`.
pub fn loss_from_logits(
    logits: Tensor<3>,
    batch: &LmBatch,
    labels: FitLabels,
) -> (Tensor<1>, Tensor<2>) {
    let [b, s, _] = logits.dims();
    let targets = match labels {
        FitLabels::Empirical => batch.targets.clone(),
        FitLabels::Sampled { seed } => sample_labels(logits.clone().detach(), seed),
    };
    let picked = log_softmax(logits, 2)
        .gather(2, targets.reshape([b, s, 1]))
        .reshape([b, s]);
    let token_loss = picked.neg() * batch.weights.clone();
    let loss = token_loss.clone().sum() / (batch.loss_tokens().max(1) as f64);
    (loss, token_loss.detach())
}

/// Labels drawn from the model's softmax by the Gumbel-max trick (exact categorical sampling).
fn sample_labels(logits: Tensor<3>, seed: u64) -> Tensor<2, Int> {
    let [b, s, v] = logits.dims();
    let mut rng = StdRng::seed_from_u64(seed);
    let gumbel: Vec<f32> = (0..b * s * v)
        .map(|_| {
            let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
            (-(-u.ln()).ln()) as f32
        })
        .collect();
    let noise = Tensor::<3>::from_data(TensorData::new(gumbel, [b, s, v]), &logits.device());
    (logits + noise).argmax(2).reshape([b, s])
}

/// One named parameter tensor, laid out as PyTorch lays it out (row-major, Linear weights as
/// `[d_out, d_in]`), for exporting the model to another framework.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    /// PyTorch-style name, e.g. `blocks.0.attn.qkv.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

fn named(name: String, t: Tensor<2>, transpose: bool) -> anyhow::Result<NamedTensor> {
    let t = if transpose { t.transpose() } else { t };
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading parameter {name}: {e:?}"))?;
    Ok(NamedTensor {
        name,
        shape,
        values,
    })
}

fn named_1d(name: String, t: Tensor<1>) -> anyhow::Result<NamedTensor> {
    let [n] = t.dims();
    let mut out = named(name, t.reshape([1, n]), false)?;
    out.shape = vec![n];
    Ok(out)
}

impl Gpt {
    /// Every parameter under its PyTorch-style name (`tok.weight`, `blocks.{i}.ln1.weight`,
    /// `blocks.{i}.attn.qkv.weight`, …, `head.bias`): Linear weights transposed to PyTorch's
    /// `[d_out, d_in]`. `tools/kronfluence/replica.py` loads exactly these names.
    pub fn named_tensors(&self) -> anyhow::Result<Vec<NamedTensor>> {
        let mut out = vec![
            named("tok.weight".into(), self.tok.weight.val(), false)?,
            named("pos.weight".into(), self.pos.weight.val(), false)?,
        ];
        let norm = |out: &mut Vec<NamedTensor>, name: &str, ln: &LayerNorm| {
            out.push(named_1d(format!("{name}.weight"), ln.gamma.val())?);
            if let Some(b) = &ln.beta {
                out.push(named_1d(format!("{name}.bias"), b.val())?);
            }
            anyhow::Ok(())
        };
        let linear = |out: &mut Vec<NamedTensor>, name: &str, l: &TrackedLinear| {
            out.push(named(
                format!("{name}.weight"),
                l.linear.weight.val(),
                true,
            )?);
            if let Some(b) = &l.linear.bias {
                out.push(named_1d(format!("{name}.bias"), b.val())?);
            }
            anyhow::Ok(())
        };
        for (i, blk) in self.blocks.iter().enumerate() {
            norm(&mut out, &format!("blocks.{i}.ln1"), &blk.ln1)?;
            linear(&mut out, &format!("blocks.{i}.attn.qkv"), &blk.attn.qkv)?;
            linear(&mut out, &format!("blocks.{i}.attn.out"), &blk.attn.out)?;
            norm(&mut out, &format!("blocks.{i}.ln2"), &blk.ln2)?;
            linear(&mut out, &format!("blocks.{i}.mlp.fc1"), &blk.mlp.fc1)?;
            linear(&mut out, &format!("blocks.{i}.mlp.fc2"), &blk.mlp.fc2)?;
        }
        norm(&mut out, "ln_f", &self.ln_f)?;
        linear(&mut out, "head", &self.head)?;
        Ok(out)
    }
}

impl FitLoss<LmBatch> for Gpt {
    fn fit_loss(&self, batch: &LmBatch, labels: FitLabels) -> Tensor<1> {
        self.loss(batch, labels).0
    }
}
