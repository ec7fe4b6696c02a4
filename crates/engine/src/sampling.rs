//! The sampling chain: penalties, then greedy or top-k → top-p → min-p → temperature → draw,
//! with a seeded RNG of our own (reproducible across versions) and no allocation per token.

use std::sync::atomic::{AtomicU64, Ordering};

/// Largest accepted `repeat_last_n` (the penalty window is allocated up front).
pub const MAX_REPEAT_LAST_N: usize = 1 << 20;

/// How the next token is chosen. Defaults follow llama.cpp's `common_params_sampling`.
///
/// Deserializing fills missing fields from [`SamplingParams::default`].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 = greedy (argmax of the penalized logits). Default 0.8.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 = off. Default 40.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; 1 = off.
    /// Default 0.95.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 = off. Default 0.05.
    pub min_p: f32,
    /// Repetition penalty over the last `repeat_last_n` accepted tokens: positive logits are
    /// divided by it, negative ones multiplied; 1 = off. Default 1.0.
    pub repeat_penalty: f32,
    /// Window of accepted tokens the penalties look at; 0 = penalties off. Default 64.
    pub repeat_last_n: usize,
    /// Subtracted once from the logit of every token present in the window; 0 = off.
    pub presence_penalty: f32,
    /// Subtracted `count` times from the logit of a token seen `count` times in the window;
    /// 0 = off.
    pub frequency_penalty: f32,
    /// RNG seed. The default is drawn from the clock (different each time); a given seed
    /// reproduces the same draws exactly.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: random_seed(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, no penalties (the other fields keep their defaults).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every field; the error names the field, its value and the allowed range.
    pub fn validate(&self) -> Result<(), String> {
        let t = self.temperature;
        if !(t.is_finite() && t >= 0.0) {
            return Err(format!(
                "temperature must be a finite number >= 0 (0 = greedy), got {t}"
            ));
        }
        let p = self.top_p;
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("top_p must be in (0, 1] (1 = off), got {p}"));
        }
        let m = self.min_p;
        if !(0.0..=1.0).contains(&m) {
            return Err(format!("min_p must be in [0, 1] (0 = off), got {m}"));
        }
        let r = self.repeat_penalty;
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "repeat_penalty must be a finite number > 0 (1 = off), got {r}"
            ));
        }
        if self.repeat_last_n > MAX_REPEAT_LAST_N {
            return Err(format!(
                "repeat_last_n must be at most {MAX_REPEAT_LAST_N} (0 = off), got {}",
                self.repeat_last_n
            ));
        }
        let pp = self.presence_penalty;
        if !pp.is_finite() {
            return Err(format!(
                "presence_penalty must be a finite number (0 = off), got {pp}"
            ));
        }
        let fp = self.frequency_penalty;
        if !fp.is_finite() {
            return Err(format!(
                "frequency_penalty must be a finite number (0 = off), got {fp}"
            ));
        }
        Ok(())
    }

    fn penalties_active(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// A seed from the clock, mixed with a process-wide counter so two calls never agree.
fn random_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut s = nanos ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    splitmix64(&mut s)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman and Vigna), seeded through splitmix64. Fixed here so that a seed
/// gives the same tokens in every version.
#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, 1) with 24 random bits.
    fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u32 << 24) as f32)
    }
}

/// A candidate token: id and logit (or probability, once the chain has computed them).
type Cand = (u32, f32);

/// Total "better" order: higher logit first, the lower id first among equal logits.
#[inline]
fn better(a: Cand, b: Cand) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 < b.0)
}

#[inline]
fn cmp_best_first(a: &Cand, b: &Cand) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// One sequence's sampler: the chain's parameters, the penalty window and the RNG.
/// Every buffer is allocated in [`Sampler::new`]; sampling allocates nothing.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    rng: Rng,
    /// Penalized copy of the logits (used only when a penalty is active).
    logits: Vec<f32>,
    /// Candidates while the chain works; afterwards the final (id, probability) list.
    cand: Vec<Cand>,
    /// Length of the penalties' window: `repeat_last_n`, or 0 when no penalty is active.
    window: usize,
    /// Ring buffer of the last `window` accepted ids.
    history: Vec<u32>,
    /// Where the next id goes in `history` once it is full.
    head: usize,
    /// How often each id occurs in `history`.
    counts: Vec<u32>,
    /// The ids with a nonzero count, each once.
    distinct: Vec<u32>,
    /// Scratch for top-p's histogram (with top-k off).
    hist: Vec<f64>,
}

impl Sampler {
    /// A sampler for a vocabulary of `vocab_size` ids; every buffer is allocated here.
    ///
    /// Panics if `params.validate()` fails (check user input with it first) or `vocab_size`
    /// is 0 or above `u32::MAX`.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Sampler {
        if let Err(e) = params.validate() {
            panic!("invalid sampling parameters: {e}");
        }
        assert!(
            vocab_size > 0 && vocab_size <= u32::MAX as usize,
            "vocab_size must be in 1..=u32::MAX, got {vocab_size}"
        );
        let penalties = params.penalties_active();
        let window = if penalties { params.repeat_last_n } else { 0 };
        Sampler {
            rng: Rng::new(params.seed),
            vocab_size,
            logits: if penalties {
                vec![0.0; vocab_size]
            } else {
                Vec::new()
            },
            cand: Vec::with_capacity(vocab_size),
            window,
            history: Vec::with_capacity(window),
            head: 0,
            counts: if penalties {
                vec![0; vocab_size]
            } else {
                Vec::new()
            },
            distinct: Vec::with_capacity(window.min(vocab_size)),
            hist: if params.top_p < 1.0 {
                vec![0.0; TOP_P_BUCKETS]
            } else {
                Vec::new()
            },
            params,
        }
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from raw logits (not modified: the penalties work on an internal
    /// copy). The chain, in llama.cpp's default order: penalties over the last `repeat_last_n`
    /// accepted tokens (repetition divides positive / multiplies negative logits, then
    /// `count * frequency + (count > 0) * presence` is subtracted); then temperature 0 →
    /// argmax of the penalized logits (ties → lowest id); otherwise top-k → top-p → min-p
    /// (both on probabilities at temperature 1, as llama.cpp does) → temperature → one draw
    /// from the seeded RNG (exactly one per call, even when one candidate is left).
    ///
    /// No allocation, lock or syscall, and only the candidates needed are sorted: top-k keeps
    /// a bounded heap while scanning; with top-k off, min-p is a threshold on the logits and
    /// top-p's cut is located with a histogram of probability mass before sorting.
    ///
    /// Does not record the token: call [`Sampler::accept`] for the tokens that are kept.
    /// `logits` may be shorter than `vocab_size` (ids past its end are never chosen);
    /// panics if it is empty or longer. NaN logits are never chosen (unless all are NaN).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.build(logits);
        if self.params.temperature <= 0.0 {
            return self.cand[0].0;
        }
        let u = self.rng.f64();
        draw(&self.cand, u)
    }

    /// The final distribution the last [`Sampler::sample`] (or [`Sampler::distribution`])
    /// drew from: (id, probability) with probabilities summing to 1, zero-probability ids left
    /// out. Sorted best first when top-k (below the vocabulary size) or top-p is on, otherwise
    /// in id order. For temperature 0 it is the one-hot argmax. Empty before the first call.
    pub fn last_distribution(&self) -> &[(u32, f32)] {
        &self.cand
    }

    /// The distribution [`Sampler::sample`] would draw from for these logits, without drawing
    /// (the RNG does not move). See [`Sampler::last_distribution`] for its shape.
    pub fn distribution(&mut self, logits: &[f32]) -> &[(u32, f32)] {
        self.build(logits);
        &self.cand
    }

    /// Records an accepted token in the penalties' window. [`Sampler::sample`] does not call
    /// it, because speculative decoding may reject a sampled token. Ids at or past
    /// `vocab_size` are ignored, and so is everything when no penalty is active.
    pub fn accept(&mut self, id: u32) {
        let n = self.window;
        if n == 0 || id as usize >= self.vocab_size {
            return;
        }
        if self.history.len() < n {
            self.history.push(id);
        } else {
            let old = std::mem::replace(&mut self.history[self.head], id);
            self.head = (self.head + 1) % n;
            let c = &mut self.counts[old as usize];
            *c -= 1;
            if *c == 0 {
                if let Some(pos) = self.distinct.iter().position(|&d| d == old) {
                    self.distinct.swap_remove(pos);
                }
            }
        }
        let c = &mut self.counts[id as usize];
        *c += 1;
        if *c == 1 {
            self.distinct.push(id);
        }
    }

    /// Clears the penalties' window and the last distribution, and reseeds the RNG with the
    /// original seed, so the sampler behaves exactly as when new.
    pub fn reset(&mut self) {
        for &id in &self.distinct {
            self.counts[id as usize] = 0;
        }
        self.distinct.clear();
        self.history.clear();
        self.head = 0;
        self.cand.clear();
        self.rng = Rng::new(self.params.seed);
    }

    /// A uniform f32 in [0, 1) from the sampler's RNG (for speculative rejection sampling).
    pub fn uniform(&mut self) -> f32 {
        self.rng.f32()
    }

    /// Runs the chain up to the final distribution, left in `self.cand`.
    fn build(&mut self, logits: &[f32]) {
        assert!(
            !logits.is_empty() && logits.len() <= self.vocab_size,
            "sampler got {} logits for a vocabulary of {}",
            logits.len(),
            self.vocab_size
        );
        let src: &[f32] = if self.params.penalties_active() {
            let buf = &mut self.logits[..logits.len()];
            buf.copy_from_slice(logits);
            apply_penalties(buf, &self.distinct, &self.counts, &self.params);
            buf
        } else {
            logits
        };
        build_distribution(src, &self.params, &mut self.cand, &mut self.hist);
    }
}

/// llama.cpp's penalties, on the ids present in the window.
fn apply_penalties(logits: &mut [f32], distinct: &[u32], counts: &[u32], p: &SamplingParams) {
    for &id in distinct {
        let Some(l) = logits.get_mut(id as usize) else {
            continue;
        };
        let count = counts[id as usize];
        if *l <= 0.0 {
            *l *= p.repeat_penalty;
        } else {
            *l /= p.repeat_penalty;
        }
        *l -= count as f32 * p.frequency_penalty + p.presence_penalty;
    }
}

/// Buckets of the top-p histogram: 1/64 nat wide, 32 nats below the max; the last bucket
/// also holds everything further down.
const TOP_P_BUCKETS: usize = 2048;
const TOP_P_BUCKETS_PER_NAT: f32 = 64.0;

/// The chain after the penalties; leaves (id, probability) in `out`. `hist` is scratch of
/// `TOP_P_BUCKETS` entries.
fn build_distribution(src: &[f32], p: &SamplingParams, out: &mut Vec<Cand>, hist: &mut [f64]) {
    out.clear();
    let n = src.len();
    let max;
    // A temperature so small that 1/t overflows is greedy too.
    if p.temperature <= 0.0 || !(1.0 / p.temperature).is_finite() {
        out.push((argmax_with_value(src, &[]).0, 1.0));
        return;
    } else if p.top_k > 0 && p.top_k < n {
        top_k_heap(src, p.top_k, out);
        if out.is_empty() {
            // Nothing finite: fall back to the argmax rule.
            out.push((argmax_with_value(src, &[]).0, 1.0));
            return;
        }
        out.sort_unstable_by(cmp_best_first);
        max = out[0].1;
        if max == f32::INFINITY {
            out.truncate(1);
            out[0].1 = 1.0;
            return;
        }
        if p.top_p < 1.0 {
            let z: f64 = out.iter().map(|c| exp_f32(c.1 - max) as f64).sum();
            let keep = top_p_walk(out, max, p.top_p as f64 * z);
            out.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = max + p.min_p.ln();
            let keep = out.iter().position(|c| c.1 < floor).unwrap_or(out.len());
            out.truncate(keep.max(1));
        }
    } else {
        let best;
        (best, max) = argmax_with_value(src, &[]);
        if !max.is_finite() {
            // Nothing finite (or +inf): one-hot on the argmax.
            out.push((best, 1.0));
            return;
        }
        // Top-k off. Min-p keeps the tokens with logit >= max + ln(min_p), a prefix of the
        // sorted order, as does top-p: so the chain keeps the shorter of the two prefixes,
        // with top-p's cut found under the normalizer of the full vocabulary.
        let floor = if p.min_p > 0.0 {
            max + p.min_p.ln()
        } else {
            f32::MIN // drops -inf and NaN
        };
        if p.top_p < 1.0 {
            top_p_full(src, max, floor, p.top_p as f64, hist, out);
        } else {
            for (i, &l) in src.iter().enumerate() {
                if l >= floor {
                    out.push((i as u32, l));
                }
            }
        }
    }
    apply_temperature(out, max, p.temperature);
    // Tokens far below the max underflow to 0 at low temperature: leave them out.
    out.retain(|c| c.1 > 0.0);
}

/// Inserts `c` into the bounded min-heap `out` of at most `k` candidates, whose root is the
/// worst kept one.
#[inline]
fn heap_offer(out: &mut Vec<Cand>, k: usize, c: Cand) {
    if out.len() < k {
        out.push(c);
        // Sift up: a child worse than its parent moves up.
        let mut j = out.len() - 1;
        while j > 0 {
            let parent = (j - 1) / 2;
            if better(out[parent], out[j]) {
                out.swap(parent, j);
                j = parent;
            } else {
                break;
            }
        }
    } else if better(c, out[0]) {
        out[0] = c;
        // Sift down: move the new root below any worse child.
        let len = out.len();
        let mut j = 0;
        loop {
            let (a, b) = (2 * j + 1, 2 * j + 2);
            let mut worst = j;
            if a < len && better(out[worst], out[a]) {
                worst = a;
            }
            if b < len && better(out[worst], out[b]) {
                worst = b;
            }
            if worst == j {
                break;
            }
            out.swap(j, worst);
            j = worst;
        }
    }
}

/// Keeps the `k` best candidates of `src` in `out` (unsorted). NaN and -inf logits are
/// skipped. Once the heap is full, blocks with nothing above its worst logit are skipped
/// with one branch-free count.
fn top_k_heap(src: &[f32], k: usize, out: &mut Vec<Cand>) {
    const BLOCK: usize = 32;
    let mut i = 0;
    while i < src.len() {
        if out.len() == k && i + BLOCK <= src.len() {
            let thr = out[0].1;
            let block = &src[i..i + BLOCK];
            // A later id with a logit equal to the worst kept one is not better: strict >.
            let hits: u32 = block.iter().map(|&l| (l > thr) as u32).sum();
            if hits == 0 {
                i += BLOCK;
                continue;
            }
            for (j, &l) in block.iter().enumerate() {
                if l > out[0].1 {
                    heap_offer(out, k, ((i + j) as u32, l));
                }
            }
            i += BLOCK;
            continue;
        }
        let l = src[i];
        if !(l.is_nan() || l == f32::NEG_INFINITY) {
            heap_offer(out, k, (i as u32, l));
        }
        i += 1;
    }
}

/// Walks `cand` (sorted best first) adding up exp(l - max) and returns how many candidates
/// top-p keeps: up to the first at which the sum reaches `target`, or all of them.
fn top_p_walk(cand: &[Cand], max: f32, target: f64) -> usize {
    let mut cum = 0.0f64;
    for (i, c) in cand.iter().enumerate() {
        cum += exp_f32(c.1 - max) as f64;
        if cum >= target {
            return i + 1;
        }
    }
    cand.len()
}

/// Top-p with top-k off, over the whole of `src` (min-p's `floor` already applied): leaves
/// the kept candidates in `out`, best first. One pass sums the normalizer and a histogram of
/// probability mass by logit (buckets 1/64 nat wide); the bucket where the mass reaches
/// `top_p` bounds the candidates, and only those are collected and sorted.
fn top_p_full(
    src: &[f32],
    max: f32,
    floor: f32,
    top_p: f64,
    hist: &mut [f64],
    out: &mut Vec<Cand>,
) {
    let bucket = |l: f32| (((max - l) * TOP_P_BUCKETS_PER_NAT) as usize).min(TOP_P_BUCKETS - 1);
    hist.fill(0.0);
    let mut lanes = [0.0f64; 8];
    let chunks = src.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let mut e = [0.0f32; 8];
        for (e, &l) in e.iter_mut().zip(c) {
            *e = exp_f32(l - max);
        }
        for (a, &e) in lanes.iter_mut().zip(&e) {
            *a += e as f64;
        }
        // Usually (with min-p) nothing in the block is above the floor: test branch-free.
        if c.iter().map(|&l| (l >= floor) as u32).sum::<u32>() > 0 {
            for (&e, &l) in e.iter().zip(c) {
                if l >= floor {
                    hist[bucket(l)] += e as f64;
                }
            }
        }
    }
    let mut z: f64 = lanes.iter().sum();
    for &l in rest {
        let e = exp_f32(l - max) as f64;
        z += e;
        if l >= floor {
            hist[bucket(l)] += e;
        }
    }
    let target = top_p * z;
    let mut cum = 0.0f64;
    let mut last = TOP_P_BUCKETS - 1;
    for (b, &m) in hist.iter().enumerate() {
        cum += m;
        if cum >= target {
            // One bucket more, so that rounding between the two sums cannot cut too early.
            last = (b + 1).min(TOP_P_BUCKETS - 1);
            break;
        }
    }
    for (i, &l) in src.iter().enumerate() {
        if l >= floor && bucket(l) <= last {
            out.push((i as u32, l));
        }
    }
    out.sort_unstable_by(cmp_best_first);
    let keep = top_p_walk(out, max, target);
    out.truncate(keep);
}

/// Softmax of `logit / temperature` over `cand`, in place (the logits become probabilities).
/// Eight at a time, so the exponentials vectorize.
fn apply_temperature(cand: &mut [Cand], max: f32, temperature: f32) {
    let inv_t = 1.0 / temperature;
    let mut lanes = [0.0f64; 8];
    let mut chunks = cand.chunks_exact_mut(8);
    for c in &mut chunks {
        let mut e = [0.0f32; 8];
        for (e, c) in e.iter_mut().zip(c.iter()) {
            *e = exp_f32((c.1 - max) * inv_t);
        }
        for ((a, c), &e) in lanes.iter_mut().zip(c.iter_mut()).zip(&e) {
            c.1 = e;
            *a += e as f64;
        }
    }
    let mut sum: f64 = lanes.iter().sum();
    for c in chunks.into_remainder() {
        c.1 = exp_f32((c.1 - max) * inv_t);
        sum += c.1 as f64;
    }
    let inv = 1.0 / sum;
    for c in cand.iter_mut() {
        c.1 = (c.1 as f64 * inv) as f32;
    }
}

/// The first id whose cumulative probability exceeds `u` times the total.
fn draw(dist: &[Cand], u: f64) -> u32 {
    let total: f64 = dist.iter().map(|c| c.1 as f64).sum();
    let target = u * total;
    let mut cum = 0.0f64;
    for c in dist {
        cum += c.1 as f64;
        if cum > target {
            return c.0;
        }
    }
    // Only reachable through rounding: the last id with a nonzero probability.
    dist.iter().rev().find(|c| c.1 > 0.0).unwrap_or(&dist[0]).0
}

/// e^x in f32 for the softmaxes: Cody-Waite reduction and a degree-5 polynomial (Cephes'
/// expf), within 3e-7 relative; branch-free so loops over it vectorize. 0 for x < -87 and
/// for NaN.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let xc = if x < -87.0 { -87.0 } else { x };
    let xc = if xc > 88.0 { 88.0 } else { xc };
    let k = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = k - MAGIC;
    let r = xc - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut y = 1.987_569_1e-4f32;
    y = y * r + 1.398_199_9e-3;
    y = y * r + 8.333_452e-3;
    y = y * r + 4.166_579_6e-2;
    y = y * r + 0.166_666_65;
    y = y * r + 0.5;
    y = y * r * r + r + 1.0;
    // 2^n: n sits in the low mantissa bits of k.
    let scale = f32::from_bits(k.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    // A mask rather than a branch (which would stop vectorization): 0 below -87 and for NaN.
    let keep = 0u32.wrapping_sub((x >= -87.0) as u32);
    f32::from_bits((y * scale).to_bits() & keep)
}

/// Σ exp(l - max) over `values`, NaN counted as 0: f32 exponentials (vectorized), summed in
/// f64 over 8 lanes.
fn sum_exp(values: &[f32], max: f32) -> f64 {
    let mut lanes = [0.0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        let mut e = [0.0f32; 8];
        for (e, &v) in e.iter_mut().zip(c) {
            *e = exp_f32(v - max);
        }
        for (a, &e) in lanes.iter_mut().zip(&e) {
            *a += e as f64;
        }
    }
    let mut sum: f64 = lanes.iter().sum();
    for &v in rest {
        sum += exp_f32(v - max) as f64;
    }
    sum
}

/// The largest non-NaN value (-inf if none), over 8 lanes so it vectorizes.
fn max_value(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in lanes.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(rest) {
        if v > max {
            max = v;
        }
    }
    max
}

/// Argmax skipping `banned`, and its value; ties → lowest id, NaN never wins. Returns
/// (0, NaN) when nothing is eligible.
fn argmax_with_value(logits: &[f32], banned: &[u32]) -> (u32, f32) {
    let max = max_value(logits);
    if banned.is_empty() {
        // The first position of the max, 16 at a time (branch-free test per block).
        let blocks = logits.chunks_exact(16);
        let rest = blocks.remainder();
        for (b, c) in blocks.enumerate() {
            if c.iter().map(|&v| (v == max) as u32).sum::<u32>() > 0 {
                let j = c.iter().position(|&v| v == max).unwrap_or(0);
                return ((b * 16 + j) as u32, max);
            }
        }
        return match rest.iter().position(|&v| v == max) {
            Some(j) => ((logits.len() - rest.len() + j) as u32, max),
            None => (0, f32::NAN),
        };
    }
    if let Some(i) = logits
        .iter()
        .enumerate()
        .position(|(i, &v)| v == max && !banned.contains(&(i as u32)))
    {
        return (i as u32, max);
    }
    // The max itself is banned: the slow way.
    let mut best = 0u32;
    let mut best_v = f32::NAN;
    for (i, &v) in logits.iter().enumerate() {
        // While best_v is NaN nothing is chosen yet: any non-NaN value wins.
        if (v > best_v || (best_v.is_nan() && !v.is_nan())) && !banned.contains(&(i as u32)) {
            best = i as u32;
            best_v = v;
        }
    }
    (best, best_v)
}

/// Greedy choice ignoring the ids in `banned` (used with --ignore-eos: end-of-generation ids
/// are masked out of the choice). Ties → the lowest id, as llama.cpp's greedy sampler; NaN
/// logits are never chosen. If every id is banned or NaN, returns 0.
pub fn argmax_excluding(logits: &[f32], banned: &[u32]) -> u32 {
    argmax_with_value(logits, banned).0
}

/// log(Σ exp(logits)), stable: the max is taken out, the exponentials (f32, about 1 ulp)
/// are summed in f64 and the log taken in f64. NaN logits count as absent.
fn log_normalizer(logits: &[f32]) -> f64 {
    let max = max_value(logits);
    if !max.is_finite() {
        return max as f64;
    }
    max as f64 + sum_exp(logits, max).ln()
}

/// The top `k` (id, log-probability) pairs by log-softmax of the raw logits, best first (ties
/// → lower id), written into `out` (cleared first; reuse it across calls to avoid allocation).
/// The normalizer is summed in f64 (see `log_normalizer`). NaN logits are left out.
pub fn top_logprobs(logits: &[f32], k: usize, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if k == 0 || logits.is_empty() {
        return;
    }
    let log_z = log_normalizer(logits);
    // The heap skips -inf; add them back at the end if k asks for more.
    top_k_heap(logits, k, out);
    out.sort_unstable_by(cmp_best_first);
    if out.len() < k {
        for (i, &l) in logits.iter().enumerate() {
            if out.len() == k {
                break;
            }
            if l == f32::NEG_INFINITY {
                out.push((i as u32, l));
            }
        }
    }
    for c in out.iter_mut() {
        c.1 = (c.1 as f64 - log_z) as f32;
    }
}

/// The log-softmax probability of `id` (computed like [`top_logprobs`]). Panics if `id` is
/// out of range.
pub fn logprob_of(logits: &[f32], id: u32) -> f32 {
    let l = logits[id as usize];
    (l as f64 - log_normalizer(logits)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_matches_the_published_generators() {
        // splitmix64 from seed 1234567 (Vigna's reference values).
        let mut s = 1234567u64;
        assert_eq!(splitmix64(&mut s), 6457827717110365317);
        assert_eq!(splitmix64(&mut s), 3203168211198807973);
        // xoshiro256** from state [1, 2, 3, 4].
        let mut r = Rng { s: [1, 2, 3, 4] };
        let got: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(got, [11520, 0, 1509978240, 1215971899390074240]);
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let rel = ((exp_f32(x) as f64 - want) / want).abs();
            worst = worst.max(rel);
            x += 0.000_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(f32::NAN), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
    }
}
