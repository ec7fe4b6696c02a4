//! PTX text to tokens (identifiers, punctuation, numbers, strings) with their line numbers,
//! and the integer and float literals PTX writes.

/// A token: identifier (directives and registers included), number, string or punctuation.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    Id(String),
    Num(String),
    Str,
    P(char),
}

/// A token with its line and its byte range in the text.
#[derive(Clone, Debug)]
pub(super) struct Token {
    pub(super) t: Tok,
    pub(super) line: u32,
    pub(super) start: usize,
    pub(super) end: usize,
}

fn is_id_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

fn is_id(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'%' | b'.')
}

pub(super) fn lex(text: &str) -> Result<Vec<Token>, String> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1u32;
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                if b[i] == b'\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
        } else if c == b'@' && b.get(i + 1) == Some(&b'@') {
            // @@DWARF lines.
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'"' {
            let s = i;
            i += 1;
            while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                i += 1;
            }
            i += 1;
            out.push(Token {
                t: Tok::Str,
                line,
                start: s,
                end: i.min(b.len()),
            });
        } else if is_id_start(c) {
            let s = i;
            while i < b.len() {
                if is_id(b[i]) {
                    i += 1;
                } else if b[i] == b':'
                    && b.get(i + 1) == Some(&b':')
                    && b.get(i + 2).is_some_and(|&c| is_id(c))
                {
                    i += 2;
                } else {
                    break;
                }
            }
            out.push(Token {
                t: Tok::Id(text[s..i].to_string()),
                line,
                start: s,
                end: i,
            });
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                // Exponent signs: 1e-5.
                i += 1;
                if i < b.len()
                    && matches!(b[i], b'+' | b'-')
                    && matches!(b[i - 1], b'e' | b'E')
                    && !text[s..i].starts_with("0x")
                    && !text[s..i].starts_with("0f")
                    && !text[s..i].starts_with("0d")
                    && !text[s..i].starts_with("0F")
                    && !text[s..i].starts_with("0D")
                {
                    i += 1;
                }
            }
            out.push(Token {
                t: Tok::Num(text[s..i].to_string()),
                line,
                start: s,
                end: i,
            });
        } else if b"{}()[],;:+-|!@<>=".contains(&c) {
            out.push(Token {
                t: Tok::P(c as char),
                line,
                start: i,
                end: i + 1,
            });
            i += 1;
        } else {
            return Err(format!("line {line}: unexpected character {:?}", c as char));
        }
    }
    Ok(out)
}

pub(super) fn parse_int(s: &str) -> Option<u64> {
    let s = s.strip_suffix('U').unwrap_or(s);
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if let Some(h) = s.strip_prefix("0b").or_else(|| s.strip_prefix("0B")) {
        u64::from_str_radix(h, 2).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse::<u64>().ok()
    }
}

/// An immediate: integer, `0f` f32 bits or `0d` f64 bits. Returns (bits, is_float_literal).
pub(super) fn parse_num(s: &str) -> Option<(u64, u8)> {
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        if h.len() == 8 {
            return u32::from_str_radix(h, 16).ok().map(|v| (v as u64, 32));
        }
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        if h.len() == 16 {
            return u64::from_str_radix(h, 16).ok().map(|v| (v, 64));
        }
    }
    if let Some(v) = parse_int(s) {
        return Some((v, 0));
    }
    // A decimal float literal: f64 bits.
    s.parse::<f64>().ok().map(|v| (v.to_bits(), 65))
}
