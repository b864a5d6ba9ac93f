//! A BERT encoder forward pass on the CPU, written for sentence embedding.
//!
//! Why not a general tensor library (candle was the first version): a sentence encoder only
//! needs the forward pass of one architecture, and two things make it much faster on a CPU than
//! a padded batch of tensors:
//!
//! - **Packed tokens.** The texts of a batch are laid end to end as one (tokens × hidden)
//!   matrix. Every dense layer is one matrix product over real tokens only — no padding, no
//!   attention mask — and attention runs per text and head on views into that matrix.
//! - **No temporaries the size of the batch's attention.** A padded batch materialises
//!   (batch × heads × length × length) scores several times per layer (100 MB at 32 × 12 × 256²);
//!   here each (text, head) pair uses a length × length scratch buffer of its own thread.
//!
//! Matrix products use the `gemm` crate (pure Rust, AVX2/AVX-512 chosen at run time, rayon for
//! threads). The arithmetic is PyTorch's: exact (erf) GELU, LayerNorm with the model's epsilon,
//! softmax over scores scaled by 1/sqrt(head size). The parity fixture (tests/parity.rs)
//! compares the result with sentence-transformers.

use anyhow::{anyhow, bail, Context, Result};
use gemm::Parallelism;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::path::Path;

/// The fields of a Hugging Face BERT `config.json` the forward pass uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_type_vocab_size() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

#[derive(Clone, Copy)]
enum Activation {
    /// x · Φ(x), with the exact normal CDF (PyTorch's default GELU; "gelu" in BERT configs)
    Gelu,
    /// the tanh approximation ("gelu_new", "gelu_pytorch_tanh")
    GeluTanh,
    Relu,
}

struct Linear {
    /// (outputs × inputs), row-major, as PyTorch stores it
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

struct Layer {
    /// query, key and value projections in one (3·hidden × hidden) matrix: one product for all three
    qkv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub struct Bert {
    pub config: BertConfig,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    token_type_embeddings: Vec<f32>,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    activation: Activation,
}

/// The tensors of a safetensors file as f32, by name, with the model's prefix ("bert.") removed.
struct Weights<'a> {
    tensors: SafeTensors<'a>,
    prefix: String,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let view = self.tensors.tensor(&full).map_err(|_| anyhow!("model.safetensors has no tensor {full}"))?;
        if view.shape() != shape {
            bail!("tensor {full} has shape {:?}, config.json implies {shape:?}", view.shape());
        }
        let data = view.data();
        Ok(match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => bail!("tensor {full} has type {other:?}; only F32, F16 and BF16 are supported"),
        })
    }

    fn linear(&self, name: &str, inputs: usize, outputs: usize) -> Result<Linear> {
        Ok(Linear {
            weight: self.get(&format!("{name}.weight"), &[outputs, inputs])?,
            bias: self.get(&format!("{name}.bias"), &[outputs])?,
            inputs,
            outputs,
        })
    }

    fn layer_norm(&self, name: &str, size: usize, eps: f64) -> Result<LayerNorm> {
        // older checkpoints call the parameters gamma and beta
        let weight = self.get(&format!("{name}.weight"), &[size]).or_else(|_| self.get(&format!("{name}.gamma"), &[size]))?;
        let bias = self.get(&format!("{name}.bias"), &[size]).or_else(|_| self.get(&format!("{name}.beta"), &[size]))?;
        Ok(LayerNorm { weight, bias, eps: eps as f32 })
    }
}

impl Bert {
    pub fn load(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: BertConfig = serde_json::from_str(
            &std::fs::read_to_string(&config_path).with_context(|| format!("cannot read {}", config_path.display()))?,
        )
        .with_context(|| format!("{} is not a BERT configuration", config_path.display()))?;
        if let Some(kind) = &config.model_type {
            if kind != "bert" {
                bail!("{}: model_type {kind:?} is not supported (only \"bert\")", config_path.display());
            }
        }
        if config.position_embedding_type.as_deref().is_some_and(|kind| kind != "absolute") {
            bail!("{}: only absolute position embeddings are supported", config_path.display());
        }
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            bail!("{}: hidden_size must be a multiple of num_attention_heads", config_path.display());
        }
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => bail!("{}: hidden_act {other:?} is not supported", config_path.display()),
        };

        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path).with_context(|| format!("cannot read {}", weights_path.display()))?;
        let tensors = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a safetensors file", weights_path.display()))?;
        let prefix = if tensors.names().iter().any(|name| name.starts_with("bert.")) { "bert." } else { "" };
        let weights = Weights { tensors, prefix: prefix.into() };

        let hidden = config.hidden_size;
        let eps = config.layer_norm_eps;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for index in 0..config.num_hidden_layers {
            let name = |part: &str| format!("encoder.layer.{index}.{part}");
            let query = weights.linear(&name("attention.self.query"), hidden, hidden)?;
            let key = weights.linear(&name("attention.self.key"), hidden, hidden)?;
            let value = weights.linear(&name("attention.self.value"), hidden, hidden)?;
            let qkv = Linear {
                weight: [query.weight, key.weight, value.weight].concat(),
                bias: [query.bias, key.bias, value.bias].concat(),
                inputs: hidden,
                outputs: 3 * hidden,
            };
            layers.push(Layer {
                qkv,
                attention_output: weights.linear(&name("attention.output.dense"), hidden, hidden)?,
                attention_norm: weights.layer_norm(&name("attention.output.LayerNorm"), hidden, eps)?,
                intermediate: weights.linear(&name("intermediate.dense"), hidden, config.intermediate_size)?,
                output: weights.linear(&name("output.dense"), config.intermediate_size, hidden)?,
                output_norm: weights.layer_norm(&name("output.LayerNorm"), hidden, eps)?,
            });
        }
        Ok(Self {
            word_embeddings: weights.get("embeddings.word_embeddings.weight", &[config.vocab_size, hidden])?,
            position_embeddings: weights.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, hidden])?,
            token_type_embeddings: weights.get("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, hidden])?,
            embeddings_norm: weights.layer_norm("embeddings.LayerNorm", hidden, eps)?,
            layers,
            activation,
            config,
        })
    }

    /// The last hidden state of each text's tokens, packed: row r of the result belongs to the
    /// text whose token range holds r. `texts[i]` is (token ids, token type ids) of text i, at
    /// most max_position_embeddings long.
    pub fn forward(&self, texts: &[(&[u32], &[u32])]) -> Result<(Vec<f32>, Vec<std::ops::Range<usize>>)> {
        let hidden = self.config.hidden_size;
        let mut ranges = Vec::with_capacity(texts.len());
        let mut total = 0;
        for (ids, types) in texts {
            if ids.len() != types.len() || ids.len() > self.config.max_position_embeddings {
                bail!("a text has {} tokens; the model reads at most {}", ids.len(), self.config.max_position_embeddings);
            }
            ranges.push(total..total + ids.len());
            total += ids.len();
        }

        // embeddings: word + position + token type, then LayerNorm
        let mut x = vec![0f32; total * hidden];
        for ((ids, types), range) in texts.iter().zip(&ranges) {
            for (position, (&id, &kind)) in ids.iter().zip(types.iter()).enumerate() {
                let (id, kind) = (id as usize, kind as usize);
                if id >= self.config.vocab_size || kind >= self.config.type_vocab_size {
                    bail!("token id {id} or type {kind} is outside the model's vocabulary");
                }
                let row = &mut x[(range.start + position) * hidden..][..hidden];
                let word = &self.word_embeddings[id * hidden..][..hidden];
                let place = &self.position_embeddings[position * hidden..][..hidden];
                let kind = &self.token_type_embeddings[kind * hidden..][..hidden];
                for i in 0..hidden {
                    row[i] = word[i] + place[i] + kind[i];
                }
            }
        }
        layer_norm(&mut x, hidden, &self.embeddings_norm);

        let mut qkv = vec![0f32; total * 3 * hidden];
        let mut context = vec![0f32; total * hidden];
        let mut projected = vec![0f32; total * hidden];
        let mut intermediate = vec![0f32; total * self.config.intermediate_size];
        for layer in &self.layers {
            linear(&x, total, &layer.qkv, &mut qkv);
            self.attention(&qkv, &ranges, &mut context);
            linear(&context, total, &layer.attention_output, &mut projected);
            add_assign(&mut x, &projected);
            layer_norm(&mut x, hidden, &layer.attention_norm);

            linear(&x, total, &layer.intermediate, &mut intermediate);
            activate(&mut intermediate, self.activation);
            linear(&intermediate, total, &layer.output, &mut projected);
            add_assign(&mut x, &projected);
            layer_norm(&mut x, hidden, &layer.output_norm);
        }
        Ok((x, ranges))
    }

    /// Multi-head self-attention of every text with itself: context = softmax(Q Kᵀ / √d) V, per
    /// (text, head), in parallel over the pairs; each pair writes its own columns of its own rows.
    fn attention(&self, qkv: &[f32], ranges: &[std::ops::Range<usize>], context: &mut [f32]) {
        let hidden = self.config.hidden_size;
        let heads = self.config.num_attention_heads;
        let head_size = hidden / heads;
        let scale = 1.0 / (head_size as f32).sqrt();
        let context_ptr = SendPtr(context.as_mut_ptr());
        let context_len = context.len();
        let pairs: Vec<(usize, usize)> = (0..ranges.len()).flat_map(|text| (0..heads).map(move |head| (text, head))).collect();
        pairs.par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, &(text, head)| {
            let range = &ranges[text];
            let length = range.len();
            if length == 0 {
                return;
            }
            scores.clear();
            scores.resize(length * length, 0.0);
            let stride = 3 * hidden;
            let q = &qkv[range.start * stride + head * head_size..];
            let k = &qkv[range.start * stride + hidden + head * head_size..];
            let v = &qkv[range.start * stride + 2 * hidden + head * head_size..];
            // scores (length × length) = Q (length × d, row stride 3h) · Kᵀ (d × length)
            // SAFETY: every index read is < (length-1)·stride + d ≤ the slice length, because
            // the text's rows lie inside qkv; scores is length × length and dense.
            unsafe {
                gemm::gemm(
                    length, length, head_size,
                    scores.as_mut_ptr(), 1, length as isize, false,
                    q.as_ptr(), 1, stride as isize,
                    k.as_ptr(), stride as isize, 1,
                    0.0, scale, false, false, false, Parallelism::None,
                );
            }
            for row in scores.chunks_exact_mut(length) {
                softmax(row);
            }
            // context rows of this text, columns of this head = P (length × length) · V (length × d)
            // SAFETY: rows range.start.. of context, columns head·d..(head+1)·d: inside the
            // buffer, and no other (text, head) pair writes them.
            unsafe {
                let out = context_ptr.get().add(range.start * hidden + head * head_size);
                debug_assert!((range.end - 1) * hidden + (head + 1) * head_size <= context_len);
                gemm::gemm(
                    length, head_size, length,
                    out, 1, hidden as isize, false,
                    scores.as_ptr(), 1, length as isize,
                    v.as_ptr(), 1, stride as isize,
                    0.0, 1.0, false, false, false, Parallelism::None,
                );
            }
        });
    }
}

/// A raw pointer the attention threads share; each writes a disjoint part.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Below this many rows (tokens in the batch), a dense layer is computed by dot products with
/// the weight rows rather than by gemm: gemm repacks the whole weight matrix on every call,
/// which for a single short query cost more than the arithmetic (11 ms per query, 3 with this).
const SMALL_BATCH_ROWS: usize = 64;

/// out (rows × outputs) = x (rows × inputs) · Wᵀ + b
fn linear(x: &[f32], rows: usize, layer: &Linear, out: &mut [f32]) {
    assert!(x.len() >= rows * layer.inputs && out.len() >= rows * layer.outputs);
    if rows < SMALL_BATCH_ROWS {
        return linear_by_rows(x, rows, layer, out);
    }
    for row in out[..rows * layer.outputs].chunks_exact_mut(layer.outputs) {
        row.copy_from_slice(&layer.bias);
    }
    // SAFETY: shapes checked above; W is (outputs × inputs) row-major, read as its transpose
    unsafe {
        gemm::gemm(
            rows, layer.outputs, layer.inputs,
            out.as_mut_ptr(), 1, layer.outputs as isize, true,
            x.as_ptr(), 1, layer.inputs as isize,
            layer.weight.as_ptr(), layer.inputs as isize, 1,
            1.0, 1.0, false, false, false, Parallelism::Rayon(0),
        );
    }
}

/// `linear` for a few rows: each output column is the dot product of every row with one weight
/// row, so the weights stream through the cache once, in blocks of columns spread over the
/// threads. Computed column-major into a scratch buffer, then transposed into `out`.
fn linear_by_rows(x: &[f32], rows: usize, layer: &Linear, out: &mut [f32]) {
    const BLOCK: usize = 64;
    let outputs = layer.outputs;
    let mut by_column = vec![0f32; outputs * rows];
    by_column.par_chunks_mut(rows * BLOCK).enumerate().for_each(|(block, columns)| {
        columns_of(x, rows, layer, block * BLOCK, columns);
    });
    for (j, column) in by_column.chunks_exact(rows).enumerate() {
        for (r, value) in column.iter().enumerate() {
            out[r * outputs + j] = *value;
        }
    }
}

/// Output columns first.. of `layer` for the `rows` rows of x, column-major into `columns`;
/// vectorised where the CPU allows (AVX-512, AVX2; else SSE2), chosen at run time.
fn columns_of(x: &[f32], rows: usize, layer: &Linear, first: usize, columns: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { columns_avx512(x, rows, layer, first, columns) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { columns_avx2(x, rows, layer, first, columns) };
        }
    }
    columns_body(x, rows, layer, first, columns)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn columns_avx512(x: &[f32], rows: usize, layer: &Linear, first: usize, columns: &mut [f32]) {
    columns_body(x, rows, layer, first, columns)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn columns_avx2(x: &[f32], rows: usize, layer: &Linear, first: usize, columns: &mut [f32]) {
    columns_body(x, rows, layer, first, columns)
}

#[inline(always)]
fn columns_body(x: &[f32], rows: usize, layer: &Linear, first: usize, columns: &mut [f32]) {
    let inputs = layer.inputs;
    for (offset, column) in columns.chunks_exact_mut(rows).enumerate() {
        let j = first + offset;
        let weights = &layer.weight[j * inputs..(j + 1) * inputs];
        for (r, value) in column.iter_mut().enumerate() {
            *value = layer.bias[j] + dot_body(&x[r * inputs..(r + 1) * inputs], weights);
        }
    }
}

/// 16 independent sums (so the compiler may keep them in vector lanes: a float sum in one
/// accumulator must be added in order), then the tail.
#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (a_chunks, b_chunks) = (a.chunks_exact(16), b.chunks_exact(16));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (a, b) in a_chunks.zip(b_chunks) {
        for lane in 0..16 {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for (a, b) in a_tail.iter().zip(b_tail) {
        sum += a * b;
    }
    sum
}

fn add_assign(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096).zip(y.par_chunks(4096)).for_each(|(x, y)| {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    });
}

fn layer_norm(x: &mut [f32], width: usize, norm: &LayerNorm) {
    x.par_chunks_mut(width).for_each(|row| {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inverse = 1.0 / (variance + norm.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * inverse * w + b;
        }
    });
}

fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inverse = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inverse;
    }
}

fn activate(x: &mut [f32], activation: Activation) {
    x.par_chunks_mut(4096).for_each(|chunk| match activation {
        Activation::Gelu => gelu(chunk),
        Activation::GeluTanh => chunk.iter_mut().for_each(|v| {
            let inner = 0.797_884_6 * (*v + 0.044_715 * *v * *v * *v);
            *v = 0.5 * *v * (1.0 + inner.tanh())
        }),
        Activation::Relu => chunk.iter_mut().for_each(|v| *v = v.max(0.0)),
    });
}

/// x · Φ(x) for every element: the hottest elementwise loop (intermediate_size values per
/// token and layer). Compiled twice: for AVX2 (8 lanes), chosen at run time when the CPU has
/// it, and for the baseline x86-64 (SSE2, 4 lanes).
fn gelu(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above).
        return unsafe { gelu_avx2(values) };
    }
    gelu_body(values)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(values: &mut [f32]) {
    gelu_body(values)
}

#[inline(always)]
fn gelu_body(values: &mut [f32]) {
    for v in values {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// The error function in single precision, as a rational function of x on [-4, 4] (outside
/// it, erf is ±1 in f32): Eigen's `generic_fast_erf_float`, which PyTorch's and XLA's CPU
/// kernels also use. No branches or calls, so the compiler vectorises the GELU loop (libm's
/// erff, a call per value, made GELU a fifth of the forward pass). Agrees with libm's erff to within 5e-7 (unit
/// test below).
#[inline(always)]
fn erf(x: f32) -> f32 {
    // plain multiply-adds (no mul_add: without FMA in the target, that is a libm call per use)
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    p *= x;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    p / q
}

/// Pool each text's rows into one vector: the mean of its token vectors, L2-normalised as
/// sentence-transformers' Normalize module does (torch.nn.functional.normalize, eps 1e-12).
pub fn mean_pool_normalised(hidden_states: &[f32], width: usize, ranges: &[std::ops::Range<usize>]) -> Vec<Vec<f32>> {
    ranges
        .iter()
        .map(|range| {
            let mut mean = vec![0f32; width];
            for row in hidden_states[range.start * width..range.end * width].chunks_exact(width) {
                for (m, v) in mean.iter_mut().zip(row) {
                    *m += v;
                }
            }
            let count = (range.len() as f32).max(1e-9);
            mean.iter_mut().for_each(|m| *m /= count);
            let norm = mean.iter().map(|m| m * m).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|m| *m /= norm);
            mean
        })
        .collect()
}

#[cfg(test)]
mod unit {
    #[test]
    fn erf_agrees_with_libm() {
        let mut worst = (0f32, 0f32);
        for i in -600_000..=600_000 {
            let x = i as f32 / 100_000.0;
            let error = (super::erf(x) - libm::erff(x)).abs();
            if error > worst.0 {
                worst = (error, x);
            }
        }
        assert!(worst.0 < 5e-7, "erf differs from libm by {} at {}", worst.0, worst.1);
    }
}
