//! Pre-tokenizers of byte-level BPE vocabularies: the regexes that cut text into words before
//! merging, one list per `tokenizer.ggml.pre` value, applied in sequence as llama.cpp does.

use fancy_regex::Regex;

use crate::TokenizerError;

const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const DEEPSEEK_LLM: &[&str] = &[
    r"[\r\n]",
    r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
    r"\s?[!-/:-~！-／：-～‘-‟　-。]+",
    r"\s+$",
    r"[一-龥ࠀ-一가-퟿]+",
    r"\p{N}+",
];

/// The regex list for a `tokenizer.ggml.pre` value, or an error naming an unsupported one.
fn patterns(pre: &str) -> Result<Vec<&'static str>, TokenizerError> {
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" | "mpt" | "olmo" | "jais" => vec![GPT2],
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" | "chatglm-bpe" => {
            vec![LLAMA3]
        }
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            vec![r"\p{N}", GPT2]
        }
        "qwen2" | "stablelm2" | "deepseek-r1-qwen" | "hunyuan" => vec![QWEN2],
        "qwen35" => vec![QWEN35],
        "deepseek-llm" => DEEPSEEK_LLM.to_vec(),
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

/// A compiled pre-tokenizer.
pub struct PreTokenizer {
    regexes: Vec<Regex>,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value.
    pub fn new(pre: &str) -> Result<PreTokenizer, TokenizerError> {
        let regexes = patterns(pre)?
            .into_iter()
            .map(|p| Regex::new(p).map_err(|e| TokenizerError::Regex(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { regexes })
    }

    /// Cuts `text` into words: each regex in turn splits every piece left by the previous
    /// one into its matches and the gaps between them (gaps are kept as words too).
    pub fn split<'t>(&self, text: &'t str, out: &mut Vec<&'t str>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        out.push(text);
        let mut next = Vec::new();
        for re in &self.regexes {
            next.clear();
            for &piece in out.iter() {
                let mut last = 0;
                let mut pos = 0;
                while pos <= piece.len() {
                    let m = match re.find_from_pos(piece, pos) {
                        Ok(Some(m)) => m,
                        // A backtracking limit hit: keep the rest as one word.
                        Ok(None) | Err(_) => break,
                    };
                    if m.start() > last {
                        next.push(&piece[last..m.start()]);
                    }
                    if m.end() > m.start() {
                        next.push(m.as_str());
                        last = m.end();
                        pos = m.end();
                    } else {
                        // Empty match: step over one character.
                        pos = m.end() + piece[m.end()..].chars().next().map_or(1, char::len_utf8);
                    }
                }
                if last < piece.len() {
                    next.push(&piece[last..]);
                }
            }
            std::mem::swap(out, &mut next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(pre: &str, text: &str) -> Vec<String> {
        let p = PreTokenizer::new(pre).unwrap();
        let mut out = Vec::new();
        p.split(text, &mut out);
        out.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn gpt2_splits_like_the_reference_regex() {
        assert_eq!(
            words("gpt2", "Hello world  it's 42!"),
            ["Hello", " world", " ", " it", "'s", " 42", "!"]
        );
        assert_eq!(words("gpt2", "a   "), ["a", "   "]);
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(words("smollm", "x 123"), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn qwen2_keeps_newlines_apart() {
        assert_eq!(
            words("qwen2", "Hi\n\n  there 12"),
            ["Hi", "\n\n", " ", " there", " ", "1", "2"]
        );
    }

    #[test]
    fn qwen35_keeps_combining_marks_in_words() {
        // "naïve" with a combining diaeresis: Qwen2's regex cuts the word at the mark.
        let text = "nai\u{308}ve ok";
        assert_eq!(words("qwen2", text), ["nai", "\u{308}ve", " ok"]);
        assert_eq!(words("qwen35", text), ["nai\u{308}ve", " ok"]);
        assert_eq!(
            words("qwen35", "Hi\n\n  there 12"),
            ["Hi", "\n\n", " ", " there", " ", "1", "2"]
        );
    }

    #[test]
    fn unknown_pre_is_named() {
        let e = PreTokenizer::new("klingon").err().unwrap();
        assert!(e.to_string().contains("klingon"));
    }
}
