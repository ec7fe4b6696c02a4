//! `surplus synth`: writes a random-weight GGUF of a real model's shape, with a real
//! tokenizer copied from another GGUF, for benchmarks on machines that only have the built
//! binary. Shapes: Llama-3-8B (`llama`, the default: 4096 wide, 32 layers, 32 heads, 8 KV
//! heads, FFN 14336) and Qwen3.6-27B (`qwen35`: 5120 wide, 48 Gated DeltaNet and 16 gated
//! attention layers, an MTP block, vocabulary 248320). Quantized as a Q4_K_M file is: Q4_K,
//! with Q6_K for attn_v, every other ffn_down and the output; the DeltaNet's small tensors
//! (conv, decay, β/α projections) in F32. The blocks are random bytes with their scales set
//! so that weights stay small: the file is fast to write and its numbers are finite. Each
//! matrix is made as it is written, so memory holds one tensor at a time, not the file.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use gguf::{GgmlType, GgufWriter, Value};

/// A real model's shape to copy.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Llama-3-8B (`llama`).
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// Qwen3.6-27B (`qwen35`): 64 layers, every 4th full attention, one MTP block.
    #[value(name = "qwen3.6-27b")]
    Qwen36_27b,
}

/// Arguments of `surplus synth`.
#[derive(clap::Args)]
pub struct Args {
    /// The file to write.
    out: PathBuf,
    /// The model shape to copy; --embd, --layers, --heads, --kv-heads, --ff and
    /// --delta-heads override its numbers (for a smaller file of the same kind).
    #[arg(long, value_enum, default_value = "llama3-8b")]
    shape: Shape,
    /// A GGUF whose tokenizer (`tokenizer.*` metadata) the model takes, which also sets the
    /// vocabulary size. Without it, a placeholder SentencePiece vocabulary of --vocab tokens
    /// (enough to load and benchmark; not for reading text).
    #[arg(long, value_name = "MODEL")]
    vocab_from: Option<String>,
    /// Tokens of the placeholder vocabulary (default: 49152, SmolLM2's, for llama3-8b as the
    /// GPU check's reference figures used; 248320, the real one, for qwen3.6-27b).
    #[arg(long)]
    vocab: Option<usize>,
    /// Width of the residual stream (4096; 5120).
    #[arg(long)]
    embd: Option<usize>,
    /// Blocks of the trunk (32; 64).
    #[arg(long)]
    layers: Option<usize>,
    /// Query heads (32; 24, of 256 dims).
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (8; 4).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// FFN width (14336; 17408).
    #[arg(long)]
    ff: Option<usize>,
    /// qwen3.6-27b only: DeltaNet key heads (16; even), each of 128 dims; there are three
    /// value heads per key head.
    #[arg(long)]
    delta_heads: Option<usize>,
    /// Leave the quantized matrices as holes: all-zero weights that take no disk space, in
    /// a file of the full size and layout (seconds to write). For `surplus plan`, which
    /// reads only the header and the small tensors; not for running.
    #[arg(long)]
    sparse: bool,
}

/// The numbers of one shape, overrides applied.
struct Dims {
    vocab: usize,
    embd: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ff: usize,
    delta_heads: usize,
}

impl Dims {
    fn new(a: &Args) -> Dims {
        let d = match a.shape {
            Shape::Llama3_8b => Dims {
                vocab: 49_152,
                embd: 4096,
                layers: 32,
                heads: 32,
                kv_heads: 8,
                ff: 14_336,
                delta_heads: 0,
            },
            Shape::Qwen36_27b => Dims {
                vocab: 248_320,
                embd: 5120,
                layers: 64,
                heads: 24,
                kv_heads: 4,
                ff: 17_408,
                delta_heads: 16,
            },
        };
        Dims {
            vocab: a.vocab.unwrap_or(d.vocab),
            embd: a.embd.unwrap_or(d.embd),
            layers: a.layers.unwrap_or(d.layers),
            heads: a.heads.unwrap_or(d.heads),
            kv_heads: a.kv_heads.unwrap_or(d.kv_heads),
            ff: a.ff.unwrap_or(d.ff),
            delta_heads: a.delta_heads.unwrap_or(d.delta_heads),
        }
    }
}

/// xorshift64*: fast, good enough for random weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Fills `data` with random blocks of `ty` (Q4_K or Q6_K) with sane scales, on all cores.
fn random_blocks(ty: GgmlType, seed: u64, data: &mut [u8]) {
    let (block, fix): (usize, fn(&mut [u8])) = match ty {
        GgmlType::Q4_K => (144, |b| {
            // d, dmin: weights d·sc·q − dmin·m of about ±0.02.
            b[0..2].copy_from_slice(&half::f16::from_f32(1.0e-4).to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(2.0e-4).to_le_bytes());
        }),
        GgmlType::Q6_K => (210, |b| {
            b[208..210].copy_from_slice(&half::f16::from_f32(2.0e-5).to_le_bytes());
        }),
        _ => unreachable!("random blocks of {ty:?}: Tensors::mat takes Q4_K and Q6_K"),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = (data.len() / block).div_ceil(threads).max(1) * block;
    std::thread::scope(|s| {
        for (i, part) in data.chunks_mut(per).enumerate() {
            s.spawn(move || {
                let mut r =
                    Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1) << 17 | 1);
                for c in part.chunks_mut(8) {
                    let v = r.next().to_le_bytes();
                    c.copy_from_slice(&v[..c.len()]);
                }
                for b in part.chunks_exact_mut(block) {
                    fix(b);
                }
            });
        }
    });
}

/// `n` uniform values in [lo, hi).
fn random_f32(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    (0..n)
        .map(|_| lo + (hi - lo) * (r.next() >> 40) as f32 / (1u64 << 24) as f32)
        .collect()
}

/// Adds tensors to a writer, counting parameters.
struct Tensors<'a> {
    g: &'a mut GgufWriter,
    seed: u64,
    params: usize,
}

impl Tensors<'_> {
    /// A `rows × cols` quantized matrix (GGUF dims `[cols, rows]`), Q4_K or Q6_K, made
    /// only when the file is written.
    fn mat(&mut self, name: &str, ty: GgmlType, rows: usize, cols: usize) -> Result<()> {
        if !matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
            bail!("random blocks of {ty:?}");
        }
        self.seed += 1;
        let seed = self.seed;
        let fill = Box::new(move |data: &mut [u8]| random_blocks(ty, seed, data));
        self.g
            .add_tensor_with(name, &[cols as u64, rows as u64], ty, fill)?;
        self.params += rows * cols;
        Ok(())
    }

    /// An F32 tensor of GGUF dims `dims` with uniform values in [lo, hi).
    fn f32(&mut self, name: &str, dims: &[usize], lo: f32, hi: f32) -> Result<()> {
        self.seed += 1;
        let n = dims.iter().product();
        let v = if lo == hi {
            vec![lo; n]
        } else {
            random_f32(n, lo, hi, self.seed)
        };
        let dims: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        self.g.add_f32(name, &dims, &v)?;
        self.params += n;
        Ok(())
    }

    fn ones(&mut self, name: &str, n: usize) -> Result<()> {
        self.f32(name, &[n], 1.0, 1.0)
    }

    /// FFN of block `l` (SwiGLU), ffn_down in Q6_K on even blocks as Q4_K_M does.
    fn ffn(&mut self, l: usize, d: usize, ff: usize) -> Result<()> {
        let p = |s: &str| format!("blk.{l}.{s}");
        self.mat(&p("ffn_gate.weight"), GgmlType::Q4_K, ff, d)?;
        self.mat(&p("ffn_up.weight"), GgmlType::Q4_K, ff, d)?;
        let down = if l.is_multiple_of(2) {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        self.mat(&p("ffn_down.weight"), down, d, ff)
    }
}

/// Qwen3.5's attention head size and DeltaNet head size.
const QWEN35_HEAD: usize = 256;
const QWEN35_DELTA_HEAD: usize = 128;

/// The `llama` blocks and metadata.
fn llama(t: &mut Tensors, dm: &Dims) -> Result<()> {
    let (d, hd) = (dm.embd, dm.embd / dm.heads);
    let kv = dm.kv_heads * hd;
    let g = &mut *t.g;
    g.set_str("general.architecture", "llama");
    g.set_str(
        "general.name",
        "synthetic random-weight llama (Llama-3-8B shape)",
    );
    g.set_u32("llama.context_length", 8192);
    g.set_u32("llama.embedding_length", d as u32);
    g.set_u32("llama.block_count", dm.layers as u32);
    g.set_u32("llama.feed_forward_length", dm.ff as u32);
    g.set_u32("llama.attention.head_count", dm.heads as u32);
    g.set_u32("llama.attention.head_count_kv", dm.kv_heads as u32);
    g.set_u32("llama.rope.dimension_count", hd as u32);
    g.set_f32("llama.rope.freq_base", 500_000.0);
    g.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
    for l in 0..dm.layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        t.ones(&p("attn_norm.weight"), d)?;
        t.ones(&p("ffn_norm.weight"), d)?;
        t.mat(&p("attn_q.weight"), GgmlType::Q4_K, d, d)?;
        t.mat(&p("attn_k.weight"), GgmlType::Q4_K, kv, d)?;
        t.mat(&p("attn_v.weight"), GgmlType::Q6_K, kv, d)?;
        t.mat(&p("attn_output.weight"), GgmlType::Q4_K, d, d)?;
        t.ffn(l, d, dm.ff)?;
    }
    Ok(())
}

/// A gated attention block of `qwen35` (trunk layer or MTP block `l`).
fn qwen35_attention(t: &mut Tensors, dm: &Dims, l: usize) -> Result<()> {
    let p = |s: &str| format!("blk.{l}.{s}");
    let (d, q, kv) = (dm.embd, dm.heads * QWEN35_HEAD, dm.kv_heads * QWEN35_HEAD);
    t.ones(&p("attn_norm.weight"), d)?;
    t.ones(&p("post_attention_norm.weight"), d)?;
    t.mat(&p("attn_q.weight"), GgmlType::Q4_K, 2 * q, d)?;
    t.mat(&p("attn_k.weight"), GgmlType::Q4_K, kv, d)?;
    t.mat(&p("attn_v.weight"), GgmlType::Q6_K, kv, d)?;
    t.mat(&p("attn_output.weight"), GgmlType::Q4_K, d, q)?;
    t.ones(&p("attn_q_norm.weight"), QWEN35_HEAD)?;
    t.ones(&p("attn_k_norm.weight"), QWEN35_HEAD)?;
    t.ffn(l, d, dm.ff)
}

/// The `qwen35` blocks and metadata: Gated DeltaNet layers with full attention every 4th,
/// then one MTP block.
fn qwen35(t: &mut Tensors, dm: &Dims) -> Result<()> {
    let d = dm.embd;
    let (nk, nv) = (dm.delta_heads, 3 * dm.delta_heads);
    let (kd, vd) = (nk * QWEN35_DELTA_HEAD, nv * QWEN35_DELTA_HEAD);
    let ch = 2 * kd + vd;
    let g = &mut *t.g;
    let a = "qwen35";
    g.set_str("general.architecture", a);
    g.set_str(
        "general.name",
        "synthetic random-weight qwen35 (Qwen3.6-27B shape)",
    );
    g.set_u32(&format!("{a}.context_length"), 262_144);
    g.set_u32(&format!("{a}.embedding_length"), d as u32);
    g.set_u32(&format!("{a}.block_count"), dm.layers as u32 + 1);
    g.set_u32(&format!("{a}.nextn_predict_layers"), 1);
    g.set_u32(&format!("{a}.feed_forward_length"), dm.ff as u32);
    g.set_u32(&format!("{a}.attention.head_count"), dm.heads as u32);
    g.set_u32(&format!("{a}.attention.head_count_kv"), dm.kv_heads as u32);
    g.set_u32(&format!("{a}.attention.key_length"), QWEN35_HEAD as u32);
    g.set_u32(&format!("{a}.attention.value_length"), QWEN35_HEAD as u32);
    g.set_u32(&format!("{a}.rope.dimension_count"), QWEN35_HEAD as u32 / 4);
    g.set_array(
        &format!("{a}.rope.dimension_sections"),
        gguf::Array::I32(vec![11, 11, 10, 0]),
    );
    g.set_f32(&format!("{a}.rope.freq_base"), 1e7);
    g.set_f32(&format!("{a}.attention.layer_norm_rms_epsilon"), 1e-6);
    g.set_u32(&format!("{a}.full_attention_interval"), 4);
    g.set_u32(&format!("{a}.ssm.conv_kernel"), 4);
    g.set_u32(&format!("{a}.ssm.state_size"), QWEN35_DELTA_HEAD as u32);
    g.set_u32(&format!("{a}.ssm.group_count"), nk as u32);
    g.set_u32(&format!("{a}.ssm.time_step_rank"), nv as u32);
    g.set_u32(&format!("{a}.ssm.inner_size"), vd as u32);
    for l in 0..dm.layers {
        if (l + 1).is_multiple_of(4) {
            qwen35_attention(t, dm, l)?;
            continue;
        }
        let p = |s: &str| format!("blk.{l}.{s}");
        t.ones(&p("attn_norm.weight"), d)?;
        t.ones(&p("post_attention_norm.weight"), d)?;
        t.mat(&p("attn_qkv.weight"), GgmlType::Q4_K, ch, d)?;
        t.mat(&p("attn_gate.weight"), GgmlType::Q4_K, vd, d)?;
        t.f32(&p("ssm_conv1d.weight"), &[4, ch], -0.5, 0.5)?;
        // dt ≈ softplus(-4) ≈ 0.018 and A in [-16, -1]: per-token decays of 0.75 to 0.98.
        t.f32(&p("ssm_dt.bias"), &[nv], -4.0, -4.0)?;
        t.f32(&p("ssm_a"), &[nv], -16.0, -1.0)?;
        t.f32(&p("ssm_beta.weight"), &[d, nv], -0.02, 0.02)?;
        t.f32(&p("ssm_alpha.weight"), &[d, nv], -0.02, 0.02)?;
        t.ones(&p("ssm_norm.weight"), QWEN35_DELTA_HEAD)?;
        t.mat(&p("ssm_out.weight"), GgmlType::Q4_K, d, vd)?;
        t.ffn(l, d, dm.ff)?;
    }
    let l = dm.layers;
    qwen35_attention(t, dm, l)?;
    let p = |s: &str| format!("blk.{l}.nextn.{s}");
    t.mat(&p("eh_proj.weight"), GgmlType::Q4_K, d, 2 * d)?;
    t.ones(&p("enorm.weight"), d)?;
    t.ones(&p("hnorm.weight"), d)?;
    t.ones(&p("shared_head_norm.weight"), d)
}

/// Runs `surplus synth`.
pub fn run(args: Args) -> Result<()> {
    let opts = registry::PullOptions {
        progress: false,
        force: false,
    };
    let vfile = match &args.vocab_from {
        Some(name) => {
            let vpath = registry::resolve(name, &opts)?;
            Some(gguf::Gguf::open(&vpath).with_context(|| format!("{}", vpath.display()))?)
        }
        None => None,
    };
    let mut dm = Dims::new(&args);
    if let Some(f) = &vfile {
        dm.vocab = f
            .metadata()
            .get_array("tokenizer.ggml.tokens")
            .map(|a| a.len())
            .unwrap_or(0);
    }
    let vocab = dm.vocab;
    if vocab < 3 {
        bail!("a vocabulary of {vocab} tokens (the source has no tokenizer.ggml.tokens?)");
    }
    let d = dm.embd;
    let qwen = args.shape == Shape::Qwen36_27b;
    if !qwen && args.delta_heads.is_some() {
        bail!("--delta-heads is for --shape qwen3.6-27b (llama has no DeltaNet layers)");
    }
    // qwen35: ssm_out's 3 × 128 × delta-heads columns must fill Q4_K's 256-value blocks.
    let head_ok = if qwen {
        dm.delta_heads > 0 && dm.delta_heads.is_multiple_of(2) && dm.layers >= 4
    } else {
        d.is_multiple_of(dm.heads.max(1))
    };
    if !d.is_multiple_of(256)
        || !dm.ff.is_multiple_of(256)
        || dm.heads == 0
        || !dm.heads.is_multiple_of(dm.kv_heads.max(1))
        || !head_ok
    {
        bail!(
            "shape: --embd and --ff must be multiples of 256 and --kv-heads divide --heads; \
             llama: --heads divides --embd; qwen3.6-27b: --delta-heads even, --layers >= 4"
        );
    }
    let mut g = GgufWriter::new();
    match &vfile {
        Some(f) => {
            for (k, v) in f.metadata().iter() {
                if k.starts_with("tokenizer.") {
                    g.set(k, v.clone());
                }
            }
        }
        None => {
            // <unk>, <s>, </s>, then placeholders: SentencePiece's defaults fit.
            let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
            tokens.extend((3..vocab).map(|i| format!("t{i}")));
            g.set_str("tokenizer.ggml.model", "llama");
            g.set_array("tokenizer.ggml.tokens", gguf::Array::String(tokens));
        }
    }
    let mut t = Tensors {
        g: &mut g,
        seed: 1,
        params: 0,
    };
    t.mat("token_embd.weight", GgmlType::Q4_K, vocab, d)?;
    t.ones("output_norm.weight", d)?;
    t.mat("output.weight", GgmlType::Q6_K, vocab, d)?;
    if qwen {
        qwen35(&mut t, &dm)?;
    } else {
        llama(&mut t, &dm)?;
    }
    let params = t.params;
    g.set("general.parameter_count", Value::U64(params as u64));
    if args.sparse {
        g.write_file_sparse(&args.out)
    } else {
        g.write_file(&args.out)
    }
    .with_context(|| format!("writing {}", args.out.display()))?;
    let size = std::fs::metadata(&args.out).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {}: {:.2}B parameters, {:.2} GB",
        args.out.display(),
        params as f64 / 1e9,
        size as f64 / 1e9
    );
    Ok(())
}
