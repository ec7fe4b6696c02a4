//! The vocabulary of an opcode: PTX data types ([`Ty`]) and the modifier list ([`Mods`])
//! the decoder consumes one by one, so that none is silently ignored.

use super::*;

/// A data type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    /// `.bN`: untyped bits, N = 8, 16, 32 or 64.
    B(u32),
    /// `.uN`: unsigned integer of N bits.
    U(u32),
    /// `.sN`: signed integer of N bits.
    S(u32),
    /// `.f16`: IEEE half.
    F16,
    /// `.f16x2`: two halves in 32 bits.
    F16x2,
    /// `.bf16`: bfloat16.
    BF16,
    /// `.bf16x2`: two bfloat16 in 32 bits.
    BF16x2,
    /// `.f32`: IEEE single.
    F32,
    /// `.f64`: IEEE double.
    F64,
    /// `.pred`: a predicate (one bit).
    Pred,
}

impl Ty {
    pub(super) fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B(8),
            "b16" => Ty::B(16),
            "b32" => Ty::B(32),
            "b64" => Ty::B(64),
            "u8" => Ty::U(8),
            "u16" => Ty::U(16),
            "u32" => Ty::U(32),
            "u64" => Ty::U(64),
            "s8" => Ty::S(8),
            "s16" => Ty::S(16),
            "s32" => Ty::S(32),
            "s64" => Ty::S(64),
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::BF16,
            "bf16x2" => Ty::BF16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    pub(super) fn bits(self) -> u32 {
        match self {
            Ty::B(b) | Ty::U(b) | Ty::S(b) => b,
            Ty::F16 | Ty::BF16 => 16,
            Ty::F16x2 | Ty::BF16x2 | Ty::F32 => 32,
            Ty::F64 => 64,
            Ty::Pred => 1,
        }
    }

    pub(super) fn int(self) -> bool {
        matches!(self, Ty::B(_) | Ty::U(_) | Ty::S(_))
    }
}

/// The modifiers of one opcode, each to be consumed by the decoder.
pub(super) struct Mods<'a> {
    items: Vec<&'a str>,
    used: Vec<bool>,
}

impl<'a> Mods<'a> {
    pub(super) fn new(items: Vec<&'a str>) -> Mods<'a> {
        let used = vec![false; items.len()];
        Mods { items, used }
    }

    pub(super) fn has(&mut self, m: &str) -> bool {
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] && *it == m {
                self.used[i] = true;
                return true;
            }
        }
        false
    }

    pub(super) fn one(&mut self, set: &[&'a str]) -> Option<&'a str> {
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] && set.contains(it) {
                self.used[i] = true;
                return Some(self.items[i]);
            }
        }
        None
    }

    pub(super) fn types(&mut self) -> Vec<Ty> {
        let mut v = Vec::new();
        for (i, it) in self.items.iter().enumerate() {
            if !self.used[i] {
                if let Some(t) = Ty::parse(it) {
                    self.used[i] = true;
                    v.push(t);
                }
            }
        }
        v
    }

    pub(super) fn rnd(&mut self) -> Option<Round> {
        self.one(&["rn", "rz", "rm", "rp"]).map(|r| match r {
            "rn" => Round::Rn,
            "rz" => Round::Rz,
            "rm" => Round::Rm,
            _ => Round::Rp,
        })
    }

    pub(super) fn irnd(&mut self) -> Option<RoundInt> {
        self.one(&["rni", "rzi", "rmi", "rpi"]).map(|r| match r {
            "rni" => RoundInt::Rni,
            "rzi" => RoundInt::Rzi,
            "rmi" => RoundInt::Rmi,
            _ => RoundInt::Rpi,
        })
    }

    pub(super) fn done(&self) -> Result<(), String> {
        let left: Vec<&str> = self
            .items
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !**u)
            .map(|(i, _)| *i)
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("unsupported modifier(s) .{}", left.join(" .")))
        }
    }
}
