//! The constrained-output flags of `surplus run` and `chat`: `--json-schema FILE`,
//! `--grammar FILE` (GBNF or Lark) and `--json-object`, compiled for the model's vocabulary.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use constrain::{Constraint, Grammar, Start, Vocabulary};
use engine::Engine;

/// Constrained-output flags (at most one of them).
#[derive(clap::Args, Clone, Debug, Default)]
#[group(multiple = false)]
pub struct ConstraintArgs {
    /// Constrain the output to JSON valid against the JSON schema in FILE (whitespace
    /// between items is allowed but bounded). Generation ends when the JSON is complete.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to the grammar in FILE: llama.cpp's GBNF (rules `name ::= ...`,
    /// start rule `root`) or llguidance's Lark (start rule `start`; a first line
    /// `%llguidance` forces Lark). Generation ends when the grammar is complete.
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<PathBuf>,
    /// Constrain the output to one JSON object, any keys and values (in `run`, not to be
    /// confused with --json, which prints the result as JSON).
    #[arg(long)]
    pub json_object: bool,
}

impl ConstraintArgs {
    /// What the flags ask the output to match, and where it came from (for messages);
    /// None without any of them. Reading the file or parsing the schema may fail.
    pub fn grammar(&self) -> Result<Option<(Grammar, String)>> {
        if let Some(path) = &self.json_schema {
            let what = format!("the JSON schema {}", path.display());
            let text = read(path, &what)?;
            let schema: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{what} is not valid JSON"))?;
            if !schema.is_object() {
                anyhow::bail!("{what} is not a JSON schema (it must be a JSON object)");
            }
            let schema = constrain::tools::with_json_options(&schema);
            return Ok(Some((Grammar::JsonSchema(schema), what)));
        }
        if let Some(path) = &self.grammar {
            let what = format!("the grammar {}", path.display());
            let text = read(path, &what)?;
            if text.trim().is_empty() {
                anyhow::bail!("{what} is empty");
            }
            return Ok(Some((Grammar::from_text(&text), what)));
        }
        if self.json_object {
            return Ok(Some((Grammar::JsonObject, "--json-object".into())));
        }
        Ok(None)
    }

    /// The compiled constraint for `engine`'s vocabulary (from the first generated token),
    /// or None without any of the flags. Errors name the file and say what is wrong.
    pub fn compile(&self, engine: &Engine) -> Result<Option<Constraint>> {
        let Some((grammar, what)) = self.grammar()? else {
            return Ok(None);
        };
        let vocab = Vocabulary::new(&engine.tokenizer, engine.n_vocab())
            .context("this model's vocabulary cannot constrain output")?;
        let c = vocab
            .compile(&grammar, Start::Now)
            .with_context(|| format!("{what} cannot be used"))?;
        Ok(Some(c))
    }
}

/// The text of `path` (`what` names it in the error).
fn read(path: &Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schema: Option<&Path>, grammar: Option<&Path>) -> ConstraintArgs {
        ConstraintArgs {
            json_schema: schema.map(Path::to_path_buf),
            grammar: grammar.map(Path::to_path_buf),
            json_object: false,
        }
    }

    #[test]
    fn files_are_read_into_grammars() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("s.json");
        std::fs::write(&s, r#"{"type": "object"}"#).unwrap();
        let (g, what) = args(Some(&s), None).grammar().unwrap().unwrap();
        let Grammar::JsonSchema(v) = g else {
            panic!("{g:?}")
        };
        assert_eq!(v["type"], "object");
        assert!(v["x-guidance"]["whitespace_pattern"].is_string());
        assert!(what.contains("s.json"), "{what}");
        let l = dir.path().join("g.lark");
        std::fs::write(&l, "start: \"yes\" | \"no\"\n").unwrap();
        let (g, _) = args(None, Some(&l)).grammar().unwrap().unwrap();
        assert_eq!(g, Grammar::Lark("start: \"yes\" | \"no\"\n".into()));
        std::fs::write(&l, "root ::= \"a\"\n").unwrap();
        let (g, _) = args(None, Some(&l)).grammar().unwrap().unwrap();
        assert_eq!(g, Grammar::Gbnf("root ::= \"a\"\n".into()));
        assert!(args(None, None).grammar().unwrap().is_none());
        let any = ConstraintArgs {
            json_object: true,
            ..ConstraintArgs::default()
        };
        assert_eq!(any.grammar().unwrap().unwrap().0, Grammar::JsonObject);
    }

    #[test]
    fn bad_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.json");
        let e = format!("{:#}", args(Some(&missing), None).grammar().unwrap_err());
        assert!(e.contains("missing.json") && e.contains("reading"), "{e}");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{\"type\": ").unwrap();
        let e = format!("{:#}", args(Some(&bad), None).grammar().unwrap_err());
        assert!(
            e.contains("bad.json") && e.contains("not valid JSON"),
            "{e}"
        );
        std::fs::write(&bad, "[1, 2]").unwrap();
        let e = format!("{:#}", args(Some(&bad), None).grammar().unwrap_err());
        assert!(e.contains("bad.json") && e.contains("JSON object"), "{e}");
        let empty = dir.path().join("empty.lark");
        std::fs::write(&empty, " \n").unwrap();
        let e = format!("{:#}", args(None, Some(&empty)).grammar().unwrap_err());
        assert!(e.contains("empty.lark is empty"), "{e}");
    }
}
