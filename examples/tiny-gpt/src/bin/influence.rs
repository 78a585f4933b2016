//! `influence` for the bundled GPT: the model is described by a run directory written by
//! `tiny-gpt` (`config.json`, `tokenizer.json`), by default the store's parent.

fn main() -> anyhow::Result<()> {
    influence_cli::main_with(tiny_gpt::task::GptTask::from_run_dir)
}
