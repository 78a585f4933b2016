//! Byte-level BPE trained on the corpus with Hugging Face's `tokenizers`.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// End-of-document token.
pub const EOS: &str = "<|endoftext|>";

/// A trained tokenizer and its end-of-document id.
pub struct Bpe {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// Id of [`EOS`].
    pub eos: u32,
}

impl Bpe {
    /// Trains a byte-level BPE of `vocab_size` on `texts`.
    pub fn train<'a>(
        texts: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self> {
        let mut trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tk = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(ByteLevel::default()))
            .with_post_processor(None::<tokenizers::PostProcessorWrapper>)
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(|e| anyhow!("building the tokenizer: {e}"))?;
        tk.train(&mut trainer, texts)
            .map_err(|e| anyhow!("training the tokenizer: {e}"))?;
        let tokenizer = Tokenizer::from(tk);
        Self::from_tokenizer(tokenizer)
    }

    fn from_tokenizer(tokenizer: Tokenizer) -> Result<Self> {
        let eos = tokenizer
            .token_to_id(EOS)
            .ok_or_else(|| anyhow!("tokenizer has no {EOS} token"))?;
        Ok(Self { tokenizer, eos })
    }

    /// Loads a tokenizer saved with [`Bpe::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let tokenizer =
            Tokenizer::from_file(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Self::from_tokenizer(tokenizer)
    }

    /// Saves as `tokenizer.json`-style JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.tokenizer
            .save(path, false)
            .map_err(|e| anyhow!("{}: {e}", path.display()))
            .with_context(|| "saving the tokenizer")
    }

    /// Vocabulary size including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(|e| anyhow!("encoding: {e}"))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| anyhow!("decoding: {e}"))
    }
}
