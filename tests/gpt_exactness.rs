//! Inside the GPT (attention `qkv`/`out`, MLP `fc1`/`fc2` and the head): per-document gradients
//! from the hook, with documents packed two to a sequence and padding, equal autodiff run on each
//! document alone.
//!
//! Tolerance: relative 1e-4. The document's forward pass is mathematically identical packed or
//! alone (per-document positions, document-masked attention whose masked weights are exactly 0),
//! but the f32 reductions run over different extents (masked keys, batch-wide loss mean), so the
//! two agree to f32 rounding accumulated through two blocks, not bit for bit.

use burn::tensor::Device;
use influence_core::{LossReduction, MemorySink, ProjectionKind};
use influence_hook::{FitLabels, Hook, HookConfig, TrackedLinear};
use influence_tests::{linear_grad, rel_err, sketch_of};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tiny_gpt::data::{LmBatch, TokenDoc, pack};
use tiny_gpt::model::{Gpt, GptConfig};

const SEQ: usize = 10;

fn layers(m: &Gpt) -> Vec<&TrackedLinear> {
    let mut out = Vec::new();
    for b in &m.blocks {
        out.extend([&b.attn.qkv, &b.attn.out, &b.mlp.fc1, &b.mlp.fc2]);
    }
    out.push(&m.head);
    out
}

#[test]
fn per_document_gradients_in_the_gpt_equal_autodiff_alone() {
    let device = Device::flex().autodiff();
    let sink = MemorySink::new();
    let config = HookConfig::default()
        .projection(ProjectionKind::Identity)
        .loss_reduction(LossReduction::MeanOverTokens)
        .window_steps(1)
        .fit_batches(1);
    let hook = Hook::<LmBatch>::new(config, sink.clone()).expect("config");
    let vocab = 40;
    let model = influence_hook::seeded(&device, 3, || {
        GptConfig::new(vocab)
            .with_d_model(16)
            .with_n_layers(2)
            .with_n_heads(2)
            .with_d_ff(32)
            .with_max_pos(SEQ)
            .with_track_head(true)
            .init(&device, &hook.tap())
    });
    let names = hook.tap().layer_names();
    assert_eq!(names.len(), 9);
    assert_eq!(names[0], "blocks.0.attn.qkv");
    assert_eq!(names[3], "blocks.0.mlp.fc2");
    assert_eq!(names[8], "head");

    let mut rng = StdRng::seed_from_u64(8);
    // Positions per document: 4 + 5 share a sequence (plus 1 padding), 7 and 4 come alone.
    let docs: Vec<TokenDoc> = [5usize, 6, 8, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| TokenDoc {
            id: 10 + i as u64,
            source: "test".into(),
            tokens: (0..n).map(|_| rng.random_range(1..vocab as u32)).collect(),
        })
        .collect();
    let seqs = pack(&docs, SEQ);
    assert_eq!(seqs.len(), 3);
    assert_eq!(seqs[0].docs.len(), 2);
    let batch = LmBatch::new(&seqs, &device);

    hook.arm();
    let (loss, token_loss) = model.loss(&batch, FitLabels::Empirical);
    let mut grads = loss.backward();
    hook.capture(&mut grads, &batch.step_batch(Some(token_loss)), &batch)
        .expect("capture");
    hook.end_step(1e-3, &model).expect("end step");
    hook.finish(&model).expect("finish");
    let store = sink.store();
    let run = store.run.as_ref().expect("run");

    for doc in &docs {
        let alone = LmBatch::new(&pack(std::slice::from_ref(doc), SEQ), &device);
        let (loss, token_loss) = model.loss(&alone, FitLabels::Empirical);
        let grads = loss.backward();
        // The mean loss of a document alone, times its tokens, is its sum loss.
        let n = (doc.tokens.len() - 1) as f64;
        for (li, layer) in layers(&model).into_iter().enumerate() {
            let want: Vec<f64> = linear_grad(layer, &grads).iter().map(|v| v * n).collect();
            let got = sketch_of(&store.batches, li, doc.id, run.layers[li].sketch_len());
            let e = rel_err(&got, &want);
            assert!(
                e < 1e-4,
                "doc {} layer {}: relative error {e}",
                doc.id,
                run.layers[li].name
            );
        }
        // The recorded per-document loss is that document's mean token loss alone.
        let alone_loss = f64::from(token_loss.sum().into_scalar::<f32>()) / n;
        let row = store.batches[0]
            .rows
            .iter()
            .find(|r| r.doc_id == doc.id)
            .expect("row");
        assert!((f64::from(row.loss.expect("loss")) - alone_loss).abs() < 1e-4);
    }
}
