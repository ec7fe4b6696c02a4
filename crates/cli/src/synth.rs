//! `surplus synth`: writes a random-weight llama-architecture GGUF of a real model's shape
//! (by default Llama-3-8B's: 4096 wide, 32 layers, 32 heads, 8 KV heads, FFN 14336) with a
//! real tokenizer copied from another GGUF, for benchmarks on machines that only have the
//! built binary. Quantized as a Q4_K_M file is: Q4_K, with Q6_K for attn_v, every other
//! ffn_down and the output. The blocks are random bytes with their scales set so that
//! weights stay small: the file is fast to write and its numbers are finite.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use gguf::{GgmlType, GgufWriter, Value};

/// Arguments of `surplus synth`.
#[derive(clap::Args)]
pub struct Args {
    /// The file to write.
    out: PathBuf,
    /// A GGUF whose tokenizer (`tokenizer.*` metadata) the model takes, which also sets the
    /// vocabulary size. Without it, a placeholder SentencePiece vocabulary of --vocab tokens
    /// (enough to load and benchmark; not for reading text).
    #[arg(long, value_name = "MODEL")]
    vocab_from: Option<String>,
    /// Tokens of the placeholder vocabulary (SmolLM2's 49152 by default).
    #[arg(long, default_value_t = 49152)]
    vocab: usize,
    /// Width of the residual stream.
    #[arg(long, default_value_t = 4096)]
    embd: usize,
    /// Blocks.
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// Key/value heads.
    #[arg(long, default_value_t = 8)]
    kv_heads: usize,
    /// FFN width.
    #[arg(long, default_value_t = 14336)]
    ff: usize,
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

/// `rows × cols` values of `ty` (Q4_K or Q6_K) as random blocks with sane scales.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Result<Vec<u8>> {
    let bytes = ty.bytes_for((rows * cols) as u64).context("tensor size")? as usize;
    let (block, fix): (usize, fn(&mut [u8])) = match ty {
        GgmlType::Q4_K => (144, |b| {
            // d, dmin: weights d·sc·q − dmin·m of about ±0.02.
            b[0..2].copy_from_slice(&half::f16::from_f32(1.0e-4).to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(2.0e-4).to_le_bytes());
        }),
        GgmlType::Q6_K => (210, |b| {
            b[208..210].copy_from_slice(&half::f16::from_f32(2.0e-5).to_le_bytes());
        }),
        _ => bail!("random blocks of {ty:?}"),
    };
    let mut data = vec![0u8; bytes];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = (bytes / block).div_ceil(threads).max(1) * block;
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
    Ok(data)
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
    let vocab = match &vfile {
        Some(f) => f
            .metadata()
            .get_array("tokenizer.ggml.tokens")
            .map(|a| a.len())
            .unwrap_or(0),
        None => args.vocab,
    };
    if vocab < 3 {
        bail!("a vocabulary of {vocab} tokens (the source has no tokenizer.ggml.tokens?)");
    }
    let (d, hd) = (args.embd, args.embd / args.heads.max(1));
    if !d.is_multiple_of(256)
        || !args.ff.is_multiple_of(256)
        || hd * args.heads != d
        || !args.heads.is_multiple_of(args.kv_heads.max(1))
    {
        bail!(
            "shape: embd and ff must be multiples of 256, heads divide embd, kv heads divide heads"
        );
    }
    let kv = args.kv_heads * hd;
    let mut g = GgufWriter::new();
    g.set_str("general.architecture", "llama");
    g.set_str("general.name", "synthetic random-weight llama");
    g.set_u32("llama.context_length", 8192);
    g.set_u32("llama.embedding_length", d as u32);
    g.set_u32("llama.block_count", args.layers as u32);
    g.set_u32("llama.feed_forward_length", args.ff as u32);
    g.set_u32("llama.attention.head_count", args.heads as u32);
    g.set_u32("llama.attention.head_count_kv", args.kv_heads as u32);
    g.set_u32("llama.rope.dimension_count", hd as u32);
    g.set_f32("llama.rope.freq_base", 500_000.0);
    g.set_f32("llama.attention.layer_norm_rms_epsilon", 1e-5);
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
    let ones = vec![1.0f32; d];
    let mut seed = 1u64;
    let mut mat = |g: &mut GgufWriter, name: &str, ty: GgmlType, rows: usize, cols: usize| {
        seed += 1;
        let data = random_blocks(ty, rows, cols, seed)?;
        g.add_tensor(name, &[cols as u64, rows as u64], ty, data)?;
        anyhow::Ok(())
    };
    mat(&mut g, "token_embd.weight", GgmlType::Q4_K, vocab, d)?;
    g.add_f32("output_norm.weight", &[d as u64], &ones)?;
    mat(&mut g, "output.weight", GgmlType::Q6_K, vocab, d)?;
    let mut params = 2 * vocab * d;
    for l in 0..args.layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        g.add_f32(&p("attn_norm.weight"), &[d as u64], &ones)?;
        g.add_f32(&p("ffn_norm.weight"), &[d as u64], &ones)?;
        mat(&mut g, &p("attn_q.weight"), GgmlType::Q4_K, d, d)?;
        mat(&mut g, &p("attn_k.weight"), GgmlType::Q4_K, kv, d)?;
        mat(&mut g, &p("attn_v.weight"), GgmlType::Q6_K, kv, d)?;
        mat(&mut g, &p("attn_output.weight"), GgmlType::Q4_K, d, d)?;
        mat(&mut g, &p("ffn_gate.weight"), GgmlType::Q4_K, args.ff, d)?;
        mat(&mut g, &p("ffn_up.weight"), GgmlType::Q4_K, args.ff, d)?;
        let down = if l % 2 == 0 {
            GgmlType::Q6_K
        } else {
            GgmlType::Q4_K
        };
        mat(&mut g, &p("ffn_down.weight"), down, d, args.ff)?;
        params += 2 * d * d + 2 * kv * d + 3 * d * args.ff;
    }
    g.set("general.parameter_count", Value::U64(params as u64));
    g.write_file(&args.out)
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
