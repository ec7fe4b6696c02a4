//! Prefix reuse: which tokens each sequence of the KV cache holds (and, for a recurrent
//! model, the states saved along them), and a host-memory LRU of evicted prefixes.
//!
//! A request starts from the longest prefix of its token ids already evaluated: in the
//! sequence it is given (in place), copied from another sequence, or loaded from host
//! memory (`--cache-ram`). Matching is exact on token ids, and a resumed prompt gives the
//! same bits as a cold one: where [`Engine::resumes_anywhere`] holds (the CPU), a token's
//! result does not depend on the batch it was evaluated in, so any shared position will
//! do, generated tokens included; elsewhere only positions a cold prompt's chunks end at
//! (multiples of the chunk, computed by prompt chunks). A recurrent state cannot be cut
//! back, so a recurrent model resumes where a state was saved: the end of a sequence still
//! in place, or a checkpoint (the end of each prompt, and every `checkpoint_every` tokens).

use engine::{Engine, EngineError};

/// How prefixes are kept.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Host memory for evicted prefixes and recurrent checkpoints, in bytes (0: none; each
    /// sequence still reuses what it holds).
    pub ram_bytes: usize,
    /// A recurrent model saves its state every this many prompt tokens (rounded up to whole
    /// prompt chunks), besides the end of each prompt; 0: only at prompt ends.
    pub checkpoint_every: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ram_bytes: 8 << 30,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

/// Prompt tokens between recurrent checkpoints by default (see BENCHMARKS.md, "Prefix
/// caching").
pub const DEFAULT_CHECKPOINT_EVERY: usize = 1024;

/// The checkpoint interval `--checkpoint-every` asks for with prompt chunks of `chunk`
/// tokens: rounded up to whole chunks (checkpoints are taken between passes); 0 stays 0.
pub fn checkpoint_interval(every: usize, chunk: usize) -> usize {
    every.div_ceil(chunk.max(1)) * chunk.max(1)
}

/// A recurrent state saved after `pos` positions.
struct Checkpoint {
    pos: usize,
    state: Vec<u8>,
}

/// Tokens at positions `0..` of a sequence or of a saved copy.
#[derive(Default)]
struct Prefix {
    tokens: Vec<u32>,
    /// Positions `0..chunked` were evaluated by prompt chunks cut at the fixed offsets.
    chunked: usize,
    /// Recurrent states saved along the tokens, by position.
    checkpoints: Vec<Checkpoint>,
}

impl Prefix {
    fn checkpoint_bytes(&self) -> usize {
        self.checkpoints.iter().map(|c| c.state.len()).sum()
    }
}

/// An evicted prefix in host memory: its KV rows and checkpoints.
struct Entry {
    prefix: Prefix,
    kv: Vec<u8>,
    used: u64,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.kv.len() + self.prefix.checkpoint_bytes()
    }
}

/// Where a request's prompt resumes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// The sequence it runs in.
    pub seq: usize,
    /// Positions reused: the prompt is evaluated from here.
    pub at: usize,
    /// A recurrent state was put back from a checkpoint.
    pub restored: bool,
    /// The prefix came from host memory.
    pub from_host: bool,
}

/// Where a candidate prefix lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Seq(usize),
    Host(usize),
}

/// A way to resume: from `holder`, `at` positions, with checkpoint `ckpt` (recurrent).
#[derive(Clone, Copy, Debug)]
struct Candidate {
    holder: Holder,
    at: usize,
    ckpt: Option<usize>,
}

/// What every sequence holds and the host cache; owned by the scheduler.
pub struct PrefixCache {
    cfg: CacheConfig,
    /// Prompt chunk length.
    chunk: usize,
    anywhere: bool,
    recurrent: bool,
    held: Vec<Prefix>,
    /// Per sequence: a job runs in it (its state moves; only its checkpoints and, without
    /// recurrent state, the KV rows of `held` may be read).
    running: Vec<bool>,
    /// Per sequence, idle: its recurrent state covers exactly `held.tokens`.
    live: Vec<bool>,
    last_used: Vec<u64>,
    host: Vec<Entry>,
    clock: u64,
    /// Bytes of host entries and checkpoints.
    bytes: usize,
}

impl PrefixCache {
    /// Nothing held yet, for `engine`'s sequences and prompt chunks of `chunk` tokens.
    pub fn new(engine: &Engine, chunk: usize, cfg: CacheConfig) -> PrefixCache {
        let n = engine.n_seq();
        let chunk = chunk.max(1);
        let every = checkpoint_interval(cfg.checkpoint_every, chunk);
        PrefixCache {
            cfg: CacheConfig {
                checkpoint_every: every,
                ..cfg
            },
            chunk,
            anywhere: engine.resumes_anywhere(),
            recurrent: engine.has_recurrent(),
            held: (0..n).map(|_| Prefix::default()).collect(),
            running: vec![false; n],
            live: vec![false; n],
            last_used: vec![0; n],
            host: Vec::new(),
            clock: 0,
            bytes: 0,
        }
    }

    /// Bytes of host memory in use (evicted prefixes and checkpoints).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Prefixes kept in host memory.
    pub fn entries(&self) -> usize {
        self.host.len()
    }

    /// The most positions of `prefix` a prompt sharing `shared` of its tokens can resume
    /// from, as the exactness rule allows (without regard to recurrent state).
    fn allowed(&self, prefix: &Prefix, shared: usize) -> usize {
        if self.anywhere {
            shared
        } else {
            shared.min(prefix.chunked) / self.chunk * self.chunk
        }
    }

    /// Whether a recurrent state saved at `pos` may be resumed from.
    fn state_ok(&self, prefix: &Prefix, pos: usize) -> bool {
        self.anywhere || (pos.is_multiple_of(self.chunk) && pos <= prefix.chunked)
    }

    /// The best way `holder` offers to resume a prompt whose first `limit` tokens are
    /// `prompt[..limit]` (the rest must be evaluated).
    fn candidate(&self, holder: Holder, prompt: &[u32]) -> Option<Candidate> {
        let (prefix, idle) = match holder {
            Holder::Seq(s) => (&self.held[s], !self.running[s]),
            Holder::Host(e) => (&self.host[e].prefix, true),
        };
        let shared = common_prefix(&prefix.tokens, prompt);
        let most = self.allowed(prefix, shared);
        if most == 0 {
            return None;
        }
        if !self.recurrent {
            return Some(Candidate {
                holder,
                at: most,
                ckpt: None,
            });
        }
        // The state in place at the end of an idle sequence.
        let len = prefix.tokens.len();
        let in_place = matches!(holder, Holder::Seq(s) if idle && self.live[s]);
        let mut best =
            (in_place && len <= most && self.state_ok(prefix, len)).then_some(Candidate {
                holder,
                at: len,
                ckpt: None,
            });
        for (i, c) in prefix.checkpoints.iter().enumerate() {
            if c.pos <= most && self.state_ok(prefix, c.pos) && best.is_none_or(|b| c.pos > b.at) {
                best = Some(Candidate {
                    holder,
                    at: c.pos,
                    ckpt: Some(i),
                });
            }
        }
        best
    }

    /// Picks the sequence for a prompt among the `free` ones and readies it to continue from
    /// the longest usable prefix of `prompt[..limit]` (`limit` < the prompt's length: at
    /// least one token is evaluated; images end it). Another sequence's prefix is copied,
    /// a host entry loaded, a recurrent checkpoint put back; what the chosen sequence held
    /// before goes to host memory if it is worth keeping. If copying or loading fails, the
    /// sequence holds nothing and the prompt is evaluated from 0. `free` is not empty.
    pub fn admit(
        &mut self,
        engine: &mut Engine,
        prompt: &[u32],
        limit: usize,
        free: &[usize],
    ) -> Resume {
        let prompt = &prompt[..limit.min(prompt.len().saturating_sub(1))];
        let mut best: Option<Candidate> = None;
        let holders = (0..self.held.len())
            .map(Holder::Seq)
            .chain((0..self.host.len()).map(Holder::Host));
        for h in holders {
            let Some(c) = self.candidate(h, prompt) else {
                continue;
            };
            // Longest first; then in place, then another sequence, then host memory.
            let rank = |c: &Candidate| {
                let place = match c.holder {
                    Holder::Seq(s) if free.contains(&s) => 2,
                    Holder::Seq(_) => 1,
                    Holder::Host(_) => 0,
                };
                (c.at, place)
            };
            if best.is_none_or(|b| rank(&c) > rank(&b)) {
                best = Some(c);
            }
        }
        let target = match best {
            Some(Candidate {
                holder: Holder::Seq(s),
                ..
            }) if free.contains(&s) => s,
            _ => self.coldest(free).unwrap_or(free[0]),
        };
        self.clock += 1;
        self.last_used[target] = self.clock;
        let cold = Resume {
            seq: target,
            ..Resume::default()
        };
        let Some(c) = best else {
            self.take(engine, target);
            return cold;
        };
        let r = self.resume(engine, target, c, prompt);
        self.running[target] = true;
        r.unwrap_or_else(|_| {
            self.forget(target);
            self.running[target] = true;
            cold
        })
    }

    /// Readies `target` to continue from candidate `c`.
    fn resume(
        &mut self,
        engine: &mut Engine,
        target: usize,
        c: Candidate,
        prompt: &[u32],
    ) -> Result<Resume, EngineError> {
        let mut r = Resume {
            seq: target,
            at: c.at,
            restored: c.ckpt.is_some(),
            from_host: matches!(c.holder, Holder::Host(_)),
        };
        match c.holder {
            Holder::Seq(s) if s == target => {
                let state = c.ckpt.map(|i| self.held[s].checkpoints[i].state.clone());
                // In place: what lies past the resumed prefix is kept in host memory first.
                if self.held[s].tokens.len() > c.at {
                    self.evict(engine, s);
                }
                if let Some(state) = state {
                    engine.load_state(s as u32, c.at, &state)?;
                }
                let p = &mut self.held[s];
                p.tokens.truncate(c.at);
                p.chunked = p.chunked.min(c.at);
                truncate_checkpoints(p, c.at, &mut self.bytes);
            }
            Holder::Seq(s) => {
                self.take(engine, target);
                engine.copy_kv(s as u32, target as u32, c.at)?;
                let src = &self.held[s];
                let mut p = Prefix {
                    tokens: src.tokens[..c.at].to_vec(),
                    chunked: src.chunked.min(c.at),
                    checkpoints: Vec::new(),
                };
                if let Some(i) = c.ckpt {
                    let state = &src.checkpoints[i].state;
                    engine.load_state(target as u32, c.at, state)?;
                    p.checkpoints.push(Checkpoint {
                        pos: c.at,
                        state: state.clone(),
                    });
                    self.bytes += state.len();
                }
                self.held[target] = p;
            }
            Holder::Host(e) => {
                self.take(engine, target);
                self.clock += 1;
                let entry = &mut self.host[e];
                entry.used = self.clock;
                let len = entry.prefix.tokens.len();
                engine.load_kv(target as u32, 0..len, &entry.kv)?;
                if let Some(i) = c.ckpt {
                    engine.load_state(target as u32, c.at, &entry.prefix.checkpoints[i].state)?;
                }
                self.held[target] = Prefix {
                    tokens: prompt[..c.at].to_vec(),
                    chunked: entry.prefix.chunked.min(c.at),
                    checkpoints: Vec::new(),
                };
            }
        }
        self.live[target] = false;
        r.at = c.at;
        Ok(r)
    }

    /// A free sequence taken for a prompt that reuses nothing in it (a sibling answer, or
    /// no prefix found): what it held goes to host memory if worth keeping.
    pub fn take(&mut self, engine: &mut Engine, seq: usize) {
        self.evict(engine, seq);
        self.bytes = self.bytes.saturating_sub(self.held[seq].checkpoint_bytes());
        self.held[seq] = Prefix::default();
        self.live[seq] = false;
        self.running[seq] = true;
    }

    /// The free sequence whose prefix was used longest ago (an empty one first).
    fn coldest(&self, free: &[usize]) -> Option<usize> {
        free.iter()
            .copied()
            .min_by_key(|&s| (!self.held[s].tokens.is_empty(), self.last_used[s]))
    }

    /// Saves sequence `seq`'s prefix in host memory, unless memory is off, the prefix is
    /// shorter than a chunk, or an entry holds it already. Entries it contains are merged
    /// into it; the least recently used entries make room.
    fn evict(&mut self, engine: &mut Engine, seq: usize) {
        let len = self.held[seq].tokens.len();
        if self.cfg.ram_bytes == 0 || len < self.chunk || self.running[seq] && self.recurrent {
            return;
        }
        if self.host.iter().any(|e| {
            e.prefix.tokens.len() >= len && e.prefix.tokens.starts_with(&self.held[seq].tokens)
        }) {
            return;
        }
        let mut kv = Vec::new();
        if engine.save_kv(seq as u32, 0..len, &mut kv).is_err() {
            return;
        }
        let mut prefix = Prefix {
            tokens: self.held[seq].tokens.clone(),
            chunked: self.held[seq].chunked,
            checkpoints: std::mem::take(&mut self.held[seq].checkpoints),
        };
        // The state at the end of an idle recurrent sequence is a checkpoint too.
        if self.recurrent && self.live[seq] && !prefix.checkpoints.iter().any(|c| c.pos == len) {
            let mut state = Vec::new();
            if let Ok(Some(l)) = engine.save_state(seq as u32, &mut state) {
                if l == len {
                    self.bytes += state.len();
                    prefix.checkpoints.push(Checkpoint { pos: len, state });
                }
            }
        }
        // Older entries this one contains are folded into it.
        let mut i = 0;
        while i < self.host.len() {
            if prefix.tokens.starts_with(&self.host[i].prefix.tokens) {
                let old = self.host.swap_remove(i);
                self.bytes = self.bytes.saturating_sub(old.kv.len());
                for c in old.prefix.checkpoints {
                    if prefix.checkpoints.iter().any(|k| k.pos == c.pos) {
                        self.bytes = self.bytes.saturating_sub(c.state.len());
                    } else {
                        prefix.checkpoints.push(c);
                    }
                }
            } else {
                i += 1;
            }
        }
        prefix.checkpoints.sort_by_key(|c| c.pos);
        self.clock += 1;
        let entry = Entry {
            prefix,
            kv,
            used: self.clock,
        };
        self.bytes += entry.kv.len();
        self.host.push(entry);
        self.fit(0);
    }

    /// Drops least recently used host entries until `extra` more bytes fit the budget.
    /// Returns whether they fit.
    fn fit(&mut self, extra: usize) -> bool {
        while self.bytes + extra > self.cfg.ram_bytes {
            let Some(i) = (0..self.host.len()).min_by_key(|&i| self.host[i].used) else {
                return false;
            };
            let e = self.host.swap_remove(i);
            self.bytes = self.bytes.saturating_sub(e.bytes());
        }
        true
    }

    /// Whether prompts of a recurrent model are cut where a chat turn starts, for a
    /// checkpoint there: only where a cut changes no result (see [`Engine::resumes_anywhere`]).
    pub fn cuts_at_turns(&self) -> bool {
        self.recurrent && self.anywhere && self.cfg.ram_bytes > 0
    }

    /// After a prompt chunk of sequence `seq` ended at position `end` (the prompt's first
    /// `end` tokens are `tokens`, cut at any image; `prompt_len` in all; a chat turn starts
    /// at `turn_start`): the sequence holds them, and a recurrent model saves its state when
    /// a checkpoint is due: every `checkpoint_every` tokens, and at the prompt's end and its
    /// turn's start (where prompts resume at chunk boundaries only, at the last boundary
    /// before each). Returns whether it saved one.
    pub fn after_chunk(
        &mut self,
        engine: &mut Engine,
        seq: usize,
        tokens: &[u32],
        end: usize,
        prompt_len: usize,
        turn_start: Option<usize>,
    ) -> bool {
        let p = &mut self.held[seq];
        p.tokens.clear();
        p.tokens.extend_from_slice(tokens);
        p.chunked = tokens.len();
        let p = &self.held[seq];
        if !self.recurrent || self.cfg.ram_bytes == 0 || tokens.len() < end {
            return false;
        }
        let every = self.cfg.checkpoint_every;
        let chunk = self.chunk;
        let mark = |m: usize| {
            if self.anywhere {
                end == m
            } else {
                end == m / chunk * chunk
            }
        };
        let due = ((every > 0 && end.is_multiple_of(every))
            || mark(prompt_len)
            || turn_start.is_some_and(mark))
            && self.state_ok(p, end);
        if !due || p.checkpoints.iter().any(|c| c.pos == end) {
            return false;
        }
        let need = engine.state_bytes();
        if !self.fit(need) {
            return false;
        }
        let mut state = Vec::with_capacity(need);
        match engine.save_state(seq as u32, &mut state) {
            Ok(Some(l)) if l == end => {
                self.bytes += state.len();
                self.held[seq]
                    .checkpoints
                    .push(Checkpoint { pos: end, state });
                true
            }
            _ => false,
        }
    }

    /// The job in sequence `seq` ended: the sequence holds `tokens` (the prompt's and the
    /// answer's ids it evaluated, cut at any image), of which the first `chunked` came from
    /// prompt chunks. A recurrent state left past them (rejected drafts) is rolled back.
    pub fn finish(&mut self, engine: &mut Engine, seq: usize, tokens: Vec<u32>, chunked: usize) {
        self.running[seq] = false;
        let valid = tokens.len();
        let p = &mut self.held[seq];
        p.tokens = tokens;
        p.chunked = chunked.min(valid);
        self.live[seq] = match engine.state_len(seq as u32) {
            None => true,
            Some(l) if l == valid => true,
            Some(_) => engine.rollback(seq as u32, valid).is_ok(),
        };
        if !self.live[seq] && self.recurrent {
            // Only the checkpoints within what it holds remain usable.
            truncate_checkpoints(&mut self.held[seq], valid, &mut self.bytes);
        }
    }

    /// The job in sequence `seq` failed: what it holds is unknown.
    pub fn forget(&mut self, seq: usize) {
        self.running[seq] = false;
        self.live[seq] = false;
        self.bytes = self.bytes.saturating_sub(self.held[seq].checkpoint_bytes());
        self.held[seq] = Prefix::default();
    }
}

/// Drops `p`'s checkpoints past `len`, counting the bytes freed.
fn truncate_checkpoints(p: &mut Prefix, len: usize, bytes: &mut usize) {
    p.checkpoints.retain(|c| {
        let keep = c.pos <= len;
        if !keep {
            *bytes = bytes.saturating_sub(c.state.len());
        }
        keep
    });
}

/// Leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
