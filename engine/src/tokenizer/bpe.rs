//! Training a tokenizer: a small byte-level BPE for models made from scratch
//! (the embedded demo's, `igpo data synth`).

use super::{TokenizerError, CHATML_VOCAB_SPECIALS};

/// Trains a byte-level BPE (GPT-2 pre-tokenization, every byte in the base
/// alphabet, ChatML special tokens first) on `texts`.
pub fn train_bpe(
    texts: &[String],
    vocab_size: usize,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};
    let fail = |e: tokenizers::Error| TokenizerError::Train(e.to_string());
    let specials: Vec<AddedToken> = CHATML_VOCAB_SPECIALS
        .iter()
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials.clone())
        .build();
    let mut tok: tokenizers::TokenizerImpl<
        BPE,
        tokenizers::NormalizerWrapper,
        ByteLevel,
        ByteLevel,
        ByteLevel,
    > = TokenizerBuilder::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
        .with_post_processor(Some(ByteLevel::new(false, true, true)))
        .with_decoder(Some(ByteLevel::new(false, true, true)))
        .build()
        .map_err(fail)?;
    // Special tokens must not be learned as merges: add them first.
    tok.add_special_tokens(specials.clone()).map_err(fail)?;
    tok.train(&mut trainer, texts.iter()).map_err(fail)?;
    let json = tok.to_string(false).map_err(fail)?;
    json.parse::<tokenizers::Tokenizer>().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specials_come_first_and_stay_whole() {
        let texts: Vec<String> = (0..200)
            .map(|i| format!("the river {i} runs past the mill and the river bends"))
            .collect();
        let tok = train_bpe(&texts, 400).unwrap();
        for (id, special) in CHATML_VOCAB_SPECIALS.iter().enumerate() {
            assert_eq!(tok.token_to_id(special), Some(id as u32));
        }
        let text = format!("{}the river", CHATML_VOCAB_SPECIALS[1]);
        let enc = tok.encode(text.as_str(), false).unwrap();
        assert_eq!(enc.get_ids()[0], 1);
        // Merges were learned: a frequent word is one token after a space.
        assert!(tok.token_to_id("Ġriver").is_some());
        assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
        assert!(tok.get_vocab_size(true) <= 400);
    }
}
