//! The local model: a BERT sentence encoder (all-MiniLM-L6-v2 by default) run on the CPU by
//! `bert.rs`, computing exactly what sentence-transformers computes for it: WordPiece tokens
//! truncated to the model's `max_seq_length`, the transformer, the mean of the token vectors
//! weighted by the attention mask, and L2 normalisation.
//!
//! The model directory is the sentence-transformers layout: `config.json`, `model.safetensors`,
//! `tokenizer.json`, and optionally `sentence_bert_config.json` (max_seq_length) and
//! `1_Pooling/config.json` (only mean pooling is supported; anything else is refused at load
//! rather than silently computing a different embedding).

use crate::bert::{mean_pool_normalised, Bert};
use crate::chunking::Piece;
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::path::Path;
use tokenizers::{Tokenizer, TruncationParams};

pub struct LocalModel {
    model: Bert,
    tokenizer: Tokenizer,
    /// The same tokenizer without truncation, to find where the tokens of a long text are.
    splitter: Tokenizer,
    /// The name recorded with every embedding (`memories.embedding_model`).
    pub name: String,
    pub dimensions: usize,
    /// Tokens the model reads (sentence-transformers' max_seq_length); longer texts are truncated.
    pub max_tokens: usize,
    /// Texts per forward pass: larger batches pad more, smaller ones use the cores less well.
    pub batch_size: usize,
    /// Forward passes that run side by side when a call has several batches, each on a thread of
    /// its own (see embed()).
    passes: Vec<rayon::ThreadPool>,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON for this model", path.display()))
}

impl LocalModel {
    /// Load the model in `dir`. `name` defaults to the directory's name.
    pub fn load(dir: &Path, name: Option<String>, batch_size: usize) -> Result<Self> {
        let model = Bert::load(dir)?;
        let config = &model.config;
        let max_tokens = match dir.join("sentence_bert_config.json") {
            path if path.exists() => read_json::<SentenceBertConfig>(&path)?.max_seq_length,
            _ => None,
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let pooling: PoolingConfig = read_json(&pooling_path)?;
            if !pooling.pooling_mode_mean_tokens
                || pooling.pooling_mode_cls_token
                || pooling.pooling_mode_max_tokens
                || pooling.pooling_mode_mean_sqrt_len_tokens
            {
                bail!("{}: only mean pooling is supported", pooling_path.display());
            }
        }

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|error| anyhow!("cannot load {}: {error}", dir.join("tokenizer.json").display()))?;
        let mut splitter = tokenizer.clone();
        splitter.with_truncation(None).map_err(|error| anyhow!("tokenizer truncation: {error}"))?;
        splitter.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_tokens, ..Default::default() }))
            .map_err(|error| anyhow!("tokenizer truncation: {error}"))?;
        // no padding: the forward pass packs texts end to end
        tokenizer.with_padding(None);
        let dimensions = config.hidden_size;
        let name = match name {
            Some(name) => name,
            None => dir
                .file_name()
                .and_then(|name| name.to_str())
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("cannot name the model after {}; pass --model-name", dir.display()))?,
        };
        Ok(Self { model, tokenizer, splitter, name, dimensions, max_tokens, batch_size: batch_size.max(1), passes: Vec::new() })
    }

    /// How many texts one call of embed() runs at once: a batch per pass.
    pub fn texts_per_round(&self) -> usize {
        self.batch_size * self.passes.len().max(1)
    }

    /// Run up to `passes` forward passes side by side (0: two, or one on a single core), each
    /// on its share of the cores (cores / passes threads). Memory: a pass holds one batch's
    /// activations, so `passes` of them hold that many times as much.
    pub fn with_passes(mut self, passes: usize) -> Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let passes = if passes == 0 { cores.min(2) } else { passes }.max(1);
        let threads = (cores / passes).max(1);
        self.passes = (0..passes)
            .map(|n| rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(move |t| format!("model-pass-{n}-{t}")).build())
            .collect::<Result<_, _>>()
            .context("cannot start the model's threads")?;
        Ok(self)
    }

    /// Embed `texts`, in order. Texts are sorted by length and run in batches of similar
    /// lengths (as sentence-transformers does), so short texts are not padded to long ones.
    ///
    /// One batch runs on every core (the shortest wait for a query). Several batches run side
    /// by side, a pass each on its share of the cores (with_passes): a pass spread over all the
    /// cores waits for its slowest thread at every matrix product and attention step, passes
    /// never wait for each other — 1.06-1.26x the texts per second on 2 cores (BENCHMARKS.md,
    /// "Embedder").
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let texts: Vec<&str> = texts.iter().map(|text| self.readable_part(text)).collect();
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&index| std::cmp::Reverse(texts[index].len()));
        let batches: Vec<&[usize]> = order.chunks(self.batch_size).collect();
        let embed = |batch: &[usize]| {
            let inputs: Vec<&str> = batch.iter().map(|&index| texts[index]).collect();
            self.embed_batch(&inputs)
        };
        let embedded: Vec<Result<Vec<Vec<f32>>>> = if batches.len() < 2 || self.passes.len() < 2 {
            batches.iter().map(|batch| embed(batch)).collect()
        } else {
            // each pass takes the next batch until none is left, or one has failed
            let next = std::sync::atomic::AtomicUsize::new(0);
            let failed = std::sync::atomic::AtomicBool::new(false);
            let passes: Vec<Vec<(usize, Result<Vec<Vec<f32>>>)>> = std::thread::scope(|scope| {
                let running: Vec<_> = self
                    .passes
                    .iter()
                    .take(batches.len())
                    .map(|pass| {
                        scope.spawn(|| {
                            pass.install(|| {
                                let mut done = Vec::new();
                                while !failed.load(std::sync::atomic::Ordering::Relaxed) {
                                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let Some(batch) = batches.get(index) else { break };
                                    let result = embed(batch);
                                    if result.is_err() {
                                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                                    }
                                    done.push((index, result));
                                }
                                done
                            })
                        })
                    })
                    .collect();
                // a pass that panicked passes its panic on, with its message
                running.into_iter().map(|pass| pass.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
            });
            let mut done: Vec<(usize, Result<Vec<Vec<f32>>>)> = passes.into_iter().flatten().collect();
            if let Some(position) = done.iter().position(|(_, result)| result.is_err()) {
                return Err(done.swap_remove(position).1.expect_err("an error"));
            }
            done.sort_by_key(|(index, _)| *index);
            done.into_iter().map(|(_, result)| result).collect()
        };
        let mut embeddings = vec![Vec::new(); texts.len()];
        for (batch, vectors) in batches.iter().zip(embedded) {
            for (index, embedding) in batch.iter().zip(vectors?) {
                embeddings[*index] = embedding;
            }
        }
        Ok(embeddings)
    }

    /// The part of `text` worth tokenising: the model reads only its first max_tokens tokens,
    /// and tokenising all of a long text costs about 250 bytes of memory per token (a 16 MB
    /// message took gigabytes). A token of real text is a few bytes, so the first
    /// max_tokens x 64 bytes (cut at a character boundary) hold the window with room to spare;
    /// only a text of hundred-character words could lose part of it.
    pub fn readable_part<'a>(&self, text: &'a str) -> &'a str {
        let limit = self.max_input_bytes();
        if text.len() <= limit {
            return text;
        }
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        &text[..end]
    }

    /// The most bytes of a text the model looks at (see readable_part).
    pub fn max_input_bytes(&self) -> usize {
        self.max_tokens * 64
    }

    /// How many tokens of a text one passage can hold: the model's window less [CLS] and [SEP].
    pub fn window(&self) -> usize {
        self.max_tokens.saturating_sub(2).max(1)
    }

    /// The first `max_pieces` tokens of `text` (without [CLS]/[SEP]), with their byte offsets,
    /// for chunking, and whether they are all of its tokens. Only the part of the text those
    /// tokens can come from is tokenised: first `max_pieces` x 8 bytes (tokens of real text are
    /// a few bytes), then, if that holds too few, `max_pieces` x 64 (as readable_part).
    pub fn pieces(&self, text: &str, max_pieces: usize) -> Result<(Vec<Piece>, bool)> {
        for bytes_per_token in [8, 64] {
            let mut end = text.len().min(max_pieces.saturating_mul(bytes_per_token));
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let encoding = self.splitter.encode(&text[..end], false).map_err(|error| anyhow!("tokenizer: {error}"))?;
            let whole_text = end == text.len();
            if encoding.len() < max_pieces && !whole_text && bytes_per_token == 8 {
                continue;
            }
            let mut previous_word = None;
            let pieces: Vec<Piece> = encoding
                .get_offsets()
                .iter()
                .zip(encoding.get_word_ids())
                .take(max_pieces)
                .map(|(&(start, end), &word)| {
                    let starts_word = word.is_none() || word != previous_word;
                    previous_word = word;
                    Piece { start, end, starts_word }
                })
                .collect();
            let all = whole_text && encoding.len() <= max_pieces;
            return Ok((pieces, all));
        }
        unreachable!("the last attempt returns")
    }

    /// How many tokens the model would read of `text` before truncation (without [CLS]/[SEP]).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let encoding = self.tokenizer.encode(text, false).map_err(|error| anyhow!("tokenizer: {error}"))?;
        Ok(encoding.get_ids().len() + encoding.get_overflowing().iter().map(|o| o.get_ids().len()).sum::<usize>())
    }

    fn embed_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|error| anyhow!("tokenizer: {error}"))?;
        let inputs: Vec<(&[u32], &[u32])> = encodings.iter().map(|encoding| (encoding.get_ids(), encoding.get_type_ids())).collect();
        let (hidden_states, ranges) = self.model.forward(&inputs)?;
        Ok(mean_pool_normalised(&hidden_states, self.dimensions, &ranges))
    }
}
